package fraud

import "math"

// Transaction is one card transaction as the fraud function receives it (see
// the Handler doc for the JSON form) and as the synthetic generator produces it.
type Transaction struct {
	CardID           string  `json:"card_id,omitempty"`
	Amount           float64 `json:"amount"`
	AvgAmount        float64 `json:"avg_amount_30d"`
	MerchantCategory string  `json:"merchant_category"`
	Country          string  `json:"country"`
	HomeCountry      string  `json:"home_country"`
	Hour             int     `json:"hour"`
	DeviceNew        bool    `json:"device_new"`
	TxLast24h        int     `json:"tx_last_24h"`
}

// Categories are the merchant categories the model knows, in feature order.
var Categories = []string{
	"grocery", "restaurant", "fuel", "travel", "electronics",
	"jewelry", "gaming", "digital_goods", "pharmacy", "apparel",
}

// Index of each engineered feature in the "features" input.
const (
	FeatAmountLog   = iota // log(1 + amount)
	FeatAvgLog             // log(1 + avg_amount_30d): the card's spend level
	FeatAmountRatio        // log((1 + amount) / (1 + avg_amount_30d)): amount against the card's usual
	FeatForeign            // 1 when country != home_country
	FeatDeviceNew          // 1 when the device was never seen on the card
	FeatNight              // 1 when hour is in [0, 5]
	FeatVelocity           // log(1 + tx_last_24h)
	FeatMerchant0          // one-hot merchant category, Categories' order, from here on
)

// NumFeatures is the width of the model's "features" input.
var NumFeatures = FeatMerchant0 + len(Categories)

// FeatureNames names every feature, in input order; top_features uses them.
var FeatureNames = func() []string {
	n := []string{"amount_log", "avg_amount_log", "amount_ratio", "foreign_country", "device_new", "night_hour", "velocity_24h"}
	for _, c := range Categories {
		n = append(n, "merchant_"+c)
	}
	return n
}()

var categoryIndex = func() map[string]int {
	m := make(map[string]int, len(Categories))
	for i, c := range Categories {
		m[c] = i
	}
	return m
}()

// Features writes tx's engineered features into dst (len NumFeatures). It is
// the one feature function: training calls it on synthetic transactions and
// the handler on requests, so the two can never drift apart. tx must be valid
// (the handler validates first); an unknown category leaves the one-hot empty.
func Features(tx *Transaction, dst []float32) {
	clear(dst[:NumFeatures])
	dst[FeatAmountLog] = float32(math.Log1p(tx.Amount))
	dst[FeatAvgLog] = float32(math.Log1p(tx.AvgAmount))
	dst[FeatAmountRatio] = float32(math.Log1p(tx.Amount) - math.Log1p(tx.AvgAmount))
	if tx.Country != tx.HomeCountry {
		dst[FeatForeign] = 1
	}
	if tx.DeviceNew {
		dst[FeatDeviceNew] = 1
	}
	if tx.Hour >= 0 && tx.Hour <= 5 {
		dst[FeatNight] = 1
	}
	dst[FeatVelocity] = float32(math.Log1p(float64(max(tx.TxLast24h, 0))))
	if i, ok := categoryIndex[tx.MerchantCategory]; ok {
		dst[FeatMerchant0+i] = 1
	}
}
