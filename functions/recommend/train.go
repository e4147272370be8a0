package recommend

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/pilotlight/pilotlight/functions/onnxgraph"
)

// Revision is the one revision this package trains.
const Revision = "recommend-00001"

// MaxK is the model's TopK width: the most items one request can ask for.
const MaxK = min(100, NumItems)

// MaskExcluded is the candidate_mask value that excludes an item (0 allows it).
const MaskExcluded float32 = -1e9

// BPR hyper-parameters.
const (
	bprEpochs = 20
	bprRate   = 0.05
	bprReg    = 0.005
	trainSeed = 11
)

// Model is the trained, exported revision with its evaluation.
type Model struct {
	Revision         string
	ONNX             []byte
	RecallAt10       float64 // measured in Go on the held-out interactions
	PopularityRecall float64 // the popularity baseline's recall@10
}

// Train trains the recommender and writes recommend-00001.onnx into outDir,
// printing one progress line per epoch (loss, holdout recall@10).
func Train(ctx context.Context, outDir string, progress io.Writer) error {
	m, err := TrainModel(ctx, progress)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return fmt.Errorf("create model directory: %w", err)
	}
	p := filepath.Join(outDir, m.Revision+".onnx")
	if err := os.WriteFile(p, m.ONNX, 0o644); err != nil {
		return fmt.Errorf("write model %s: %w", m.Revision, err)
	}
	fmt.Fprintf(progress, "%s: wrote %s (%d bytes, holdout recall@10 %.4f, popularity baseline %.4f)\n", m.Revision, p, len(m.ONNX), m.RecallAt10, m.PopularityRecall)
	return nil
}

// mf is matrix factorisation: score(u, i) = user[u]·item[i] + bias[i].
type mf struct {
	user, item []float64 // row-major [NumUsers][Dim], [NumItems][Dim]
	bias       []float64
}

func (m *mf) score(u, i int) float64 {
	s := m.bias[i]
	pu, qi := m.user[u*Dim:(u+1)*Dim], m.item[i*Dim:(i+1)*Dim]
	for f := range Dim {
		s += pu[f] * qi[f]
	}
	return s
}

// topK ranks every item for u, skipping exclude (sorted), best first; ties
// keep the lower item id first.
func (m *mf) topK(u, k int, exclude []int) []int {
	top := make([]int, 0, k+1)
	scores := make([]float64, 0, k+1)
	for i := range NumItems {
		if _, found := slices.BinarySearch(exclude, i); found {
			continue
		}
		s := m.score(u, i)
		if len(top) == k && s <= scores[k-1] {
			continue
		}
		at := len(top)
		for at > 0 && scores[at-1] < s {
			at--
		}
		top, scores = slices.Insert(top, at, i), slices.Insert(scores, at, s)
		if len(top) > k {
			top, scores = top[:k], scores[:k]
		}
	}
	return top
}

func (m *mf) recallAt10(d *Interactions) float64 {
	top := make([][]int, NumUsers)
	for u := range top {
		top[u] = m.topK(u, 10, d.Train[u])
	}
	return d.RecallAt(10, top)
}

// TrainModel trains BPR matrix factorisation (Rendle et al. 2009) with plain
// SGD on Generate(DataSeed)'s training interactions, single-threaded and
// seeded, so the same build on the same architecture exports the same bytes.
func TrainModel(ctx context.Context, progress io.Writer) (*Model, error) {
	if progress == nil {
		progress = io.Discard
	}
	start := time.Now()
	d := Generate(DataSeed)
	r := rand.New(rand.NewPCG(trainSeed, DataSeed))
	m := &mf{user: make([]float64, NumUsers*Dim), item: make([]float64, NumItems*Dim), bias: make([]float64, NumItems)}
	for i := range m.user {
		m.user[i] = 0.1 * r.NormFloat64()
	}
	for i := range m.item {
		m.item[i] = 0.1 * r.NormFloat64()
	}
	type pair struct{ u, i int }
	var pairs []pair
	for u, items := range d.Train {
		for _, i := range items {
			pairs = append(pairs, pair{u, i})
		}
	}
	var pu [Dim]float64
	for e := 1; e <= bprEpochs; e++ {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("train %s: %w", Revision, err)
		}
		r.Shuffle(len(pairs), func(a, b int) { pairs[a], pairs[b] = pairs[b], pairs[a] })
		loss := 0.0
		for _, p := range pairs {
			j := r.IntN(NumItems)
			for {
				if _, found := slices.BinarySearch(d.Train[p.u], j); !found {
					break
				}
				j = r.IntN(NumItems)
			}
			x := m.score(p.u, p.i) - m.score(p.u, j)
			loss += softplus(-x)
			g := 1 / (1 + math.Exp(x)) // d(-log σ(x))/dx, negated
			u := m.user[p.u*Dim : (p.u+1)*Dim]
			qi, qj := m.item[p.i*Dim:(p.i+1)*Dim], m.item[j*Dim:(j+1)*Dim]
			copy(pu[:], u)
			for f := range Dim {
				u[f] += bprRate * (g*(qi[f]-qj[f]) - bprReg*u[f])
				qi[f] += bprRate * (g*pu[f] - bprReg*qi[f])
				qj[f] += bprRate * (-g*pu[f] - bprReg*qj[f])
			}
			m.bias[p.i] += bprRate * (g - bprReg*m.bias[p.i])
			m.bias[j] += bprRate * (-g - bprReg*m.bias[j])
		}
		line := fmt.Sprintf("%s: epoch %2d/%d bpr_loss %.4f", Revision, e, bprEpochs, loss/float64(len(pairs)))
		if e%5 == 0 || e == bprEpochs {
			line += fmt.Sprintf(" holdout_recall@10 %.4f", m.recallAt10(d))
		}
		fmt.Fprintln(progress, line)
	}
	recall := m.recallAt10(d)
	popRecall := d.RecallAt(10, d.PopularityTopK(10))
	fmt.Fprintf(progress, "%s: trained in %s, recall@10 %.4f vs popularity %.4f\n", Revision, time.Since(start).Round(time.Millisecond), recall, popRecall)
	raw, err := m.export(recall, popRecall)
	if err != nil {
		return nil, err
	}
	return &Model{Revision: Revision, ONNX: raw, RecallAt10: recall, PopularityRecall: popRecall}, nil
}

func softplus(x float64) float64 {
	if x > 30 {
		return x
	}
	return math.Log1p(math.Exp(x))
}

// export writes the scoring graph: Gather the user's embedding, MatMul with
// the item embeddings transposed, Add the item bias and the candidate mask,
// TopK with K = MaxK.
func (m *mf) export(recall, popRecall float64) ([]byte, error) {
	g := onnxgraph.New(Revision)
	g.SetModelVersion(1)
	g.SetDoc("Pilotlight recommender: BPR matrix factorisation trained in Go on a synthetic interaction log; see functions/recommend.")
	g.Meta("pilotlight.function", "recommend")
	g.Meta("pilotlight.revision", Revision)
	g.Meta("model.kind", "bpr_matrix_factorisation")
	g.Meta("num_users", strconv.Itoa(NumUsers))
	g.Meta("num_items", strconv.Itoa(NumItems))
	g.Meta("dim", strconv.Itoa(Dim))
	g.Meta("top_k", strconv.Itoa(MaxK))
	g.Meta("training.seed", strconv.FormatUint(DataSeed, 10))
	g.Meta("training.epochs", strconv.Itoa(bprEpochs))
	g.Meta("holdout.recall_at_10", strconv.FormatFloat(recall, 'f', 4, 64))
	g.Meta("holdout.popularity_recall_at_10", strconv.FormatFloat(popRecall, 'f', 4, 64))

	itemT := make([]float32, 0, Dim*NumItems) // [Dim][NumItems]
	for f := range Dim {
		for i := range NumItems {
			itemT = append(itemT, float32(m.item[i*Dim+f]))
		}
	}
	users := g.InitFloat("user_embedding", []int64{NumUsers, Dim}, f32(m.user))
	items := g.InitFloat("item_embedding_t", []int64{Dim, NumItems}, itemT)
	bias := g.InitFloat("item_bias", []int64{NumItems}, f32(m.bias))

	uid := g.Input("user_id", onnxgraph.Int64, onnxgraph.Batch)
	mask := g.Input("candidate_mask", onnxgraph.Float, onnxgraph.Batch, NumItems)
	scores := g.Add(g.Add(g.MatMul(g.Gather(users, uid, 0), items), bias), mask)
	g.TopK(scores, MaxK, "scores", "items")
	g.Output("scores", onnxgraph.Float, onnxgraph.Batch, MaxK)
	g.Output("items", onnxgraph.Int64, onnxgraph.Batch, MaxK)
	return g.Marshal()
}

func f32(x []float64) []float32 {
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = float32(v)
	}
	return out
}
