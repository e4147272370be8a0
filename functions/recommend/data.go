package recommend

import (
	"math"
	"math/rand/v2"
	"slices"
)

// Size of the synthetic catalogue and of the model.
const (
	NumUsers = 3000
	NumItems = 1500
	// Dim is the embedding width of users and items.
	Dim = 16
	// clusters is the number of taste clusters the generator plants.
	clusters = 12
	// DataSeed seeds the synthetic interaction log.
	DataSeed uint64 = 20260303
	// holdoutShare of each user's interactions is held out for evaluation.
	holdoutShare = 0.2
)

// Interactions is the synthetic interaction log, split per user into what
// training sees and what evaluation holds out.
type Interactions struct {
	Train [][]int // Train[u] lists the items user u interacted with, for training
	Test  [][]int // Test[u] lists held-out items of user u (disjoint from Train[u])
}

// Generate draws the interaction log from a seeded PCG generator. Every item
// belongs to one of 12 taste clusters and has a Zipf-like popularity; every
// user has a main and a second cluster. A user's interactions come 65% from
// the main cluster, 15% from the second and 20% from the whole catalogue,
// each drawn in proportion to popularity: popularity alone explains some of
// the log, taste explains more. The same seed always gives the same log.
func Generate(seed uint64) *Interactions {
	r := rand.New(rand.NewPCG(seed, seed^0x5851f42d4c957f2d))
	itemCluster := make([]int, NumItems)
	pop := make([]float64, NumItems)
	rank := r.Perm(NumItems)
	byCluster := make([][]int, clusters)
	for i := range NumItems {
		itemCluster[i] = r.IntN(clusters)
		pop[i] = math.Pow(float64(rank[i]+10), -0.9)
		byCluster[itemCluster[i]] = append(byCluster[itemCluster[i]], i)
	}
	all := make([]int, NumItems)
	for i := range all {
		all[i] = i
	}
	d := &Interactions{Train: make([][]int, NumUsers), Test: make([][]int, NumUsers)}
	for u := range NumUsers {
		main, second := r.IntN(clusters), r.IntN(clusters)
		n := 15 + r.IntN(36)
		seen := make(map[int]bool, n)
		var items []int
		for tries := 0; len(items) < n && tries < 20*n; tries++ {
			pool := all
			switch x := r.Float64(); {
			case x < 0.65:
				pool = byCluster[main]
			case x < 0.80:
				pool = byCluster[second]
			}
			it := weightedPick(r, pool, pop)
			if !seen[it] {
				seen[it] = true
				items = append(items, it)
			}
		}
		r.Shuffle(len(items), func(i, j int) { items[i], items[j] = items[j], items[i] })
		nTest := int(math.Round(holdoutShare * float64(len(items))))
		d.Test[u] = slices.Sorted(slices.Values(items[:nTest]))
		d.Train[u] = slices.Sorted(slices.Values(items[nTest:]))
	}
	return d
}

func weightedPick(r *rand.Rand, pool []int, w []float64) int {
	total := 0.0
	for _, i := range pool {
		total += w[i]
	}
	x := r.Float64() * total
	for _, i := range pool {
		x -= w[i]
		if x < 0 {
			return i
		}
	}
	return pool[len(pool)-1]
}

// Popularity counts each item's training interactions.
func (d *Interactions) Popularity() []int {
	c := make([]int, NumItems)
	for _, items := range d.Train {
		for _, i := range items {
			c[i]++
		}
	}
	return c
}

// PopularityTopK is the baseline recommender: for every user, the k most
// popular items (training counts) the user has not interacted with in training.
func (d *Interactions) PopularityTopK(k int) [][]int {
	c := d.Popularity()
	order := make([]int, NumItems)
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return c[b] - c[a] })
	out := make([][]int, NumUsers)
	for u := range out {
		for _, it := range order {
			if len(out[u]) == k {
				break
			}
			if _, found := slices.BinarySearch(d.Train[u], it); !found {
				out[u] = append(out[u], it)
			}
		}
	}
	return out
}

// RecallAt is the mean over users with held-out items of
// |top[u][:k] ∩ Test[u]| / min(k, |Test[u]|).
func (d *Interactions) RecallAt(k int, top [][]int) float64 {
	sum, users := 0.0, 0
	for u, test := range d.Test {
		if len(test) == 0 {
			continue
		}
		hits := 0
		for _, it := range top[u][:min(k, len(top[u]))] {
			if _, found := slices.BinarySearch(test, it); found {
				hits++
			}
		}
		sum += float64(hits) / float64(min(k, len(test)))
		users++
	}
	return sum / float64(users)
}
