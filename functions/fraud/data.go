package fraud

import (
	"math"
	"math/rand/v2"
	"strconv"
)

// Example is one labelled synthetic transaction.
type Example struct {
	Tx    Transaction
	Fraud bool
}

// Seeds and sizes of the synthetic data. The training set and the holdout are
// drawn from independent generators, so the holdout is genuinely unseen.
const (
	TrainSeed   uint64 = 20260101
	HoldoutSeed uint64 = 20260202
	TrainSize          = 40000
	HoldoutSize        = 10000
	// fraudRate is the share of fraudulent transactions the generator plants.
	fraudRate = 0.06
)

var countries = []string{"US", "GB", "DE", "FR", "BR", "IN", "JP", "NG", "MX", "CA"}

// legitCategoryWeights and fraudCategoryWeights follow Categories' order:
// fraud is drawn towards resellable goods and digital services.
var (
	legitCategoryWeights = []float64{30, 20, 12, 5, 4, 1, 3, 8, 10, 7}
	fraudCategoryWeights = []float64{4, 3, 4, 8, 25, 15, 15, 18, 2, 6}
)

// Generate draws n labelled transactions from a seeded PCG generator. The same
// seed always gives the same transactions. Planted fraud patterns, each present
// in only part of the fraud (so no single rule finds it all):
//   - an amount far above the card's 30-day average,
//   - a device never seen on the card,
//   - a country other than the card's home country (strongest together with a
//     new device: travellers pay abroad from their own phone),
//   - a night hour (0-5),
//   - many transactions in the last 24 hours,
//   - resellable merchant categories.
//
// Noise: legitimate customers travel, change phones, shop at night and make
// big purchases, and a share of fraud looks entirely ordinary.
func Generate(seed uint64, n int) []Example {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	out := make([]Example, n)
	for i := range out {
		out[i] = draw(r, i)
	}
	return out
}

// HoldoutSet is the evaluation data the tests and the exported metrics use.
func HoldoutSet() []Example { return Generate(HoldoutSeed, HoldoutSize) }

func draw(r *rand.Rand, i int) Example {
	home := countries[r.IntN(len(countries))]
	avg := math.Exp(3.5 + 0.9*r.NormFloat64()) // typical card spend, ~33 median
	tx := Transaction{
		CardID:      "c-" + strconv.Itoa(r.IntN(100000)),
		HomeCountry: home,
		Country:     home,
		AvgAmount:   round2(avg),
		Hour:        dayHour(r),
		TxLast24h:   poisson(r, 2),
	}
	fraud := r.Float64() < fraudRate
	ratio := math.Exp(0.55 * r.NormFloat64()) // amount / usual amount
	cat := weighted(r, legitCategoryWeights)
	switch {
	case !fraud:
		if r.Float64() < 0.04 { // a big purchase
			ratio *= math.Exp(1 + r.Float64()*1.5)
		}
		if r.Float64() < 0.05 {
			tx.DeviceNew = true
		}
		if r.Float64() < 0.07 { // travelling
			tx.Country = other(r, home)
			if r.Float64() < 0.3 {
				tx.TxLast24h += poisson(r, 3)
			}
		}
		if r.Float64() < 0.05 {
			tx.Hour = r.IntN(6)
		}
	case r.Float64() < 0.03:
		// Fraud indistinguishable from a normal purchase.
	default:
		if r.Float64() < 0.6 {
			ratio *= math.Exp(1.3 + 1.2*r.Float64())
		}
		if r.Float64() < 0.6 {
			tx.DeviceNew = true
		}
		if r.Float64() < 0.5 {
			tx.Country = other(r, home)
		}
		if r.Float64() < 0.5 {
			tx.Hour = r.IntN(6)
		}
		if r.Float64() < 0.5 {
			tx.TxLast24h += 3 + poisson(r, 6)
		}
		if r.Float64() < 0.7 {
			cat = weighted(r, fraudCategoryWeights)
		}
	}
	tx.MerchantCategory = Categories[cat]
	tx.Amount = round2(avg * ratio)
	return Example{Tx: tx, Fraud: fraud}
}

// dayHour draws an hour from a daytime-heavy profile (few purchases at night).
func dayHour(r *rand.Rand) int {
	for {
		h := r.IntN(24)
		if h >= 7 || r.Float64() < 0.15 {
			return h
		}
	}
}

func other(r *rand.Rand, home string) string {
	for {
		c := countries[r.IntN(len(countries))]
		if c != home {
			return c
		}
	}
}

func weighted(r *rand.Rand, w []float64) int {
	total := 0.0
	for _, x := range w {
		total += x
	}
	u := r.Float64() * total
	for i, x := range w {
		u -= x
		if u < 0 {
			return i
		}
	}
	return len(w) - 1
}

// poisson draws from a Poisson distribution with mean lambda (Knuth).
func poisson(r *rand.Rand, lambda float64) int {
	l, k, p := math.Exp(-lambda), 0, 1.0
	for {
		p *= r.Float64()
		if p <= l {
			return k
		}
		k++
	}
}

func round2(x float64) float64 { return math.Round(x*100) / 100 }
