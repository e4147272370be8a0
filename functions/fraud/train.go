package fraud

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pilotlight/pilotlight/functions/onnxgraph"
)

// Revisions this package trains, in order.
const (
	RevisionLR  = "fraud-00001" // logistic regression
	RevisionMLP = "fraud-00002" // one hidden layer of HiddenUnits ReLUs
)

// HiddenUnits is the width of fraud-00002's hidden layer.
const HiddenUnits = 16

// Model is one trained, exported revision.
type Model struct {
	Revision   string
	ONNX       []byte
	HoldoutAUC float64 // measured in Go on HoldoutSet before export
}

// Train trains both revisions and writes <revision>.onnx into outDir,
// printing one progress line per epoch (loss, holdout AUC) to progress.
func Train(ctx context.Context, outDir string, progress io.Writer) error {
	models, err := TrainModels(ctx, progress)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return fmt.Errorf("create model directory: %w", err)
	}
	for _, m := range models {
		p := filepath.Join(outDir, m.Revision+".onnx")
		if err := os.WriteFile(p, m.ONNX, 0o644); err != nil {
			return fmt.Errorf("write model %s: %w", m.Revision, err)
		}
		fmt.Fprintf(progress, "%s: wrote %s (%d bytes, holdout AUC %.4f)\n", m.Revision, p, len(m.ONNX), m.HoldoutAUC)
	}
	return nil
}

// TrainModels trains both revisions on Generate(TrainSeed, TrainSize) and
// returns their ONNX bytes. It is single-threaded and deterministic: the same
// build on the same architecture produces the same bytes every time.
func TrainModels(ctx context.Context, progress io.Writer) ([]Model, error) {
	if progress == nil {
		progress = io.Discard
	}
	train := matrix(Generate(TrainSeed, TrainSize))
	hold := matrix(HoldoutSet())
	mean, invStd := standardiser(train.raw)
	train.standardise(mean, invStd)
	hold.standardise(mean, invStd)

	start := time.Now()
	lr, err := trainLR(ctx, train, hold, progress)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "%s: trained in %s\n", RevisionLR, time.Since(start).Round(time.Millisecond))
	start = time.Now()
	mlp, err := trainMLP(ctx, train, hold, progress)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "%s: trained in %s\n", RevisionMLP, time.Since(start).Round(time.Millisecond))

	var out []Model
	for _, n := range []net{lr, mlp} {
		auc := AUC(n.scores(hold), hold.y)
		raw, err := n.export(mean, invStd, auc)
		if err != nil {
			return nil, err
		}
		out = append(out, Model{Revision: n.revision(), ONNX: raw, HoldoutAUC: auc})
	}
	return out, nil
}

// dataset is a feature matrix: raw features in raw, standardised ones in x.
type dataset struct {
	raw [][]float32
	x   [][]float64
	y   []bool
}

func matrix(ex []Example) *dataset {
	d := &dataset{raw: make([][]float32, len(ex)), y: make([]bool, len(ex))}
	for i := range ex {
		d.raw[i] = make([]float32, NumFeatures)
		Features(&ex[i].Tx, d.raw[i])
		d.y[i] = ex[i].Fraud
	}
	d.x = make([][]float64, len(ex))
	return d
}

// standardiser is the training set's per-feature mean and 1/std; the exported
// graph applies exactly these float32 values, so serving takes raw features.
func standardiser(raw [][]float32) (mean, invStd []float32) {
	mean, invStd = make([]float32, NumFeatures), make([]float32, NumFeatures)
	for j := range NumFeatures {
		s, ss := 0.0, 0.0
		for _, r := range raw {
			s += float64(r[j])
		}
		m := s / float64(len(raw))
		for _, r := range raw {
			d := float64(r[j]) - m
			ss += d * d
		}
		sd := math.Sqrt(ss / float64(len(raw)))
		mean[j], invStd[j] = float32(m), float32(1/max(sd, 1e-3))
	}
	return mean, invStd
}

func (d *dataset) standardise(mean, invStd []float32) {
	for i, r := range d.raw {
		z := make([]float64, NumFeatures)
		for j := range z {
			// Same float32 arithmetic as the graph's Sub then Mul.
			z[j] = float64((r[j] - mean[j]) * invStd[j])
		}
		d.x[i] = z
	}
}

// net is a trained model: it scores standardised rows and exports itself.
type net interface {
	revision() string
	logit(z []float64) float64
	scores(d *dataset) []float64
	export(mean, invStd []float32, auc float64) ([]byte, error)
}

func scoresOf(n net, d *dataset) []float64 {
	s := make([]float64, len(d.x))
	for i, z := range d.x {
		s[i] = n.logit(z)
	}
	return s
}

// adam is the Adam optimiser over one flat parameter vector.
type adam struct {
	m, v []float64
	t    int
}

const (
	adamBeta1 = 0.9
	adamBeta2 = 0.999
	adamEps   = 1e-8
)

func newAdam(n int) *adam { return &adam{m: make([]float64, n), v: make([]float64, n)} }

func (a *adam) step(p, g []float64, lr float64) {
	a.t++
	c1 := 1 - math.Pow(adamBeta1, float64(a.t))
	c2 := 1 - math.Pow(adamBeta2, float64(a.t))
	for i := range p {
		a.m[i] = adamBeta1*a.m[i] + (1-adamBeta1)*g[i]
		a.v[i] = adamBeta2*a.v[i] + (1-adamBeta2)*g[i]*g[i]
		p[i] -= lr * (a.m[i] / c1) / (math.Sqrt(a.v[i]/c2) + adamEps)
	}
}

func sigmoid(x float64) float64 { return 1 / (1 + math.Exp(-x)) }

// logLoss is the binary cross-entropy of a logit against a label.
func logLoss(logit float64, y bool) float64 {
	if y {
		return softplus(-logit)
	}
	return softplus(logit)
}

func softplus(x float64) float64 {
	if x > 30 {
		return x
	}
	return math.Log1p(math.Exp(x))
}

func label(y bool) float64 {
	if y {
		return 1
	}
	return 0
}

// Training hyper-parameters.
const (
	lrEpochs    = 12
	lrBatch     = 256
	lrRate      = 0.02
	lrL2        = 1e-4
	mlpEpochs   = 20
	mlpBatch    = 128
	mlpRate     = 0.003
	mlpL2       = 1e-4
	shuffleSeed = 7
)

// epochs runs the shared mini-batch loop: a seeded shuffle per epoch, grad
// accumulates one batch's gradient, step applies it; it reports loss and AUC.
func epochs(ctx context.Context, name string, n, batch, count int, grad func(i int) float64, step func(batchLen int), evalAUC func() float64, progress io.Writer) error {
	r := rand.New(rand.NewPCG(shuffleSeed, uint64(count)))
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	for e := 1; e <= count; e++ {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("train %s: %w", name, err)
		}
		r.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		loss := 0.0
		for s := 0; s < n; s += batch {
			end := min(s+batch, n)
			for _, i := range order[s:end] {
				loss += grad(i)
			}
			step(end - s)
		}
		fmt.Fprintf(progress, "%s: epoch %2d/%d loss %.4f holdout_auc %.4f\n", name, e, count, loss/float64(n), evalAUC())
	}
	return nil
}

// lrNet is logistic regression on standardised features.
type lrNet struct {
	w []float64 // NumFeatures weights, then the bias
}

func (m *lrNet) revision() string { return RevisionLR }

func (m *lrNet) logit(z []float64) float64 {
	s := m.w[NumFeatures]
	for j, v := range z {
		s += m.w[j] * v
	}
	return s
}

func (m *lrNet) scores(d *dataset) []float64 { return scoresOf(m, d) }

func trainLR(ctx context.Context, train, hold *dataset, progress io.Writer) (*lrNet, error) {
	m := &lrNet{w: make([]float64, NumFeatures+1)}
	g := make([]float64, len(m.w))
	opt := newAdam(len(m.w))
	grad := func(i int) float64 {
		z := train.x[i]
		l := m.logit(z)
		d := sigmoid(l) - label(train.y[i])
		for j, v := range z {
			g[j] += d * v
		}
		g[NumFeatures] += d
		return logLoss(l, train.y[i])
	}
	step := func(n int) {
		for j := range g {
			g[j] /= float64(n)
			if j < NumFeatures {
				g[j] += lrL2 * m.w[j]
			}
		}
		opt.step(m.w, g, lrRate)
		clear(g)
	}
	auc := func() float64 { return AUC(m.scores(hold), hold.y) }
	if err := epochs(ctx, RevisionLR, len(train.x), lrBatch, lrEpochs, grad, step, auc, progress); err != nil {
		return nil, err
	}
	return m, nil
}

// mlpNet is NumFeatures -> HiddenUnits ReLU -> 1 logit. Parameters live in
// one flat slice so one Adam serves them all: W1 (row-major [F][H]), b1, w2, b2.
type mlpNet struct {
	p []float64
}

func (m *mlpNet) revision() string { return RevisionMLP }

func (m *mlpNet) w1() []float64 { return m.p[:NumFeatures*HiddenUnits] }
func (m *mlpNet) b1() []float64 {
	return m.p[NumFeatures*HiddenUnits : NumFeatures*HiddenUnits+HiddenUnits]
}
func (m *mlpNet) w2() []float64 {
	o := NumFeatures*HiddenUnits + HiddenUnits
	return m.p[o : o+HiddenUnits]
}
func (m *mlpNet) b2() *float64 { return &m.p[len(m.p)-1] }

// forward fills pre (the hidden pre-activations) and returns the logit.
func (m *mlpNet) forward(z, pre []float64) float64 {
	w1, b1, w2 := m.w1(), m.b1(), m.w2()
	out := *m.b2()
	for h := range HiddenUnits {
		s := b1[h]
		for j, v := range z {
			s += v * w1[j*HiddenUnits+h]
		}
		pre[h] = s
		if s > 0 {
			out += s * w2[h]
		}
	}
	return out
}

func (m *mlpNet) logit(z []float64) float64 {
	var pre [HiddenUnits]float64
	return m.forward(z, pre[:])
}

func (m *mlpNet) scores(d *dataset) []float64 { return scoresOf(m, d) }

func trainMLP(ctx context.Context, train, hold *dataset, progress io.Writer) (*mlpNet, error) {
	m := &mlpNet{p: make([]float64, NumFeatures*HiddenUnits+2*HiddenUnits+1)}
	rng := rand.New(rand.NewPCG(TrainSeed, 16))
	w1 := m.w1()
	for i := range w1 {
		w1[i] = rng.NormFloat64() * math.Sqrt(2/float64(NumFeatures))
	}
	for i, w2 := 0, m.w2(); i < len(w2); i++ {
		w2[i] = rng.NormFloat64() * math.Sqrt(1/float64(HiddenUnits))
	}
	g := make([]float64, len(m.p))
	gw1 := g[:NumFeatures*HiddenUnits]
	gb1 := g[NumFeatures*HiddenUnits : NumFeatures*HiddenUnits+HiddenUnits]
	gw2 := g[NumFeatures*HiddenUnits+HiddenUnits : len(g)-1]
	var pre [HiddenUnits]float64
	opt := newAdam(len(m.p))
	grad := func(i int) float64 {
		z := train.x[i]
		l := m.forward(z, pre[:])
		d := sigmoid(l) - label(train.y[i])
		w2 := m.w2()
		for h := range HiddenUnits {
			if pre[h] <= 0 {
				continue
			}
			gw2[h] += d * pre[h]
			dh := d * w2[h]
			gb1[h] += dh
			for j, v := range z {
				gw1[j*HiddenUnits+h] += dh * v
			}
		}
		g[len(g)-1] += d
		return logLoss(l, train.y[i])
	}
	step := func(n int) {
		for j := range g {
			g[j] /= float64(n)
		}
		for j := range gw1 {
			gw1[j] += mlpL2 * m.p[j]
		}
		opt.step(m.p, g, mlpRate)
		clear(g)
	}
	auc := func() float64 { return AUC(m.scores(hold), hold.y) }
	if err := epochs(ctx, RevisionMLP, len(train.x), mlpBatch, mlpEpochs, grad, step, auc, progress); err != nil {
		return nil, err
	}
	return m, nil
}

func f32(x []float64) []float32 {
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = float32(v)
	}
	return out
}

// graph starts a fraud model: input "features", standardised into z.
func graph(revision, kind, contributions string, mean, invStd []float32, auc float64) (g *onnxgraph.Graph, z string) {
	g = onnxgraph.New(revision)
	g.SetModelVersion(1)
	g.SetDoc("Pilotlight fraud detector (" + kind + "), trained in Go on synthetic transactions; see functions/fraud.")
	g.Meta("pilotlight.function", "fraud")
	g.Meta("pilotlight.revision", revision)
	g.Meta("model.kind", kind)
	g.Meta("features", strings.Join(FeatureNames, ","))
	g.Meta("contributions", contributions)
	g.Meta("training.seed", strconv.FormatUint(TrainSeed, 10))
	g.Meta("training.examples", strconv.Itoa(TrainSize))
	g.Meta("holdout.seed", strconv.FormatUint(HoldoutSeed, 10))
	g.Meta("holdout.examples", strconv.Itoa(HoldoutSize))
	g.Meta("holdout.auc", strconv.FormatFloat(auc, 'f', 4, 64))
	F := int64(NumFeatures)
	x := g.Input("features", onnxgraph.Float, onnxgraph.Batch, F)
	m := g.InitFloat("feature_mean", []int64{F}, mean)
	s := g.InitFloat("feature_inv_std", []int64{F}, invStd)
	return g, g.Mul(g.Sub(x, m), s)
}

func outputs(g *onnxgraph.Graph, logit, contrib string) {
	g.OpNamed("probability", "Sigmoid", []string{logit})
	g.Rename(contrib, "contributions")
	g.Output("probability", onnxgraph.Float, onnxgraph.Batch, 1)
	g.Output("contributions", onnxgraph.Float, onnxgraph.Batch, int64(NumFeatures))
}

func (m *lrNet) export(mean, invStd []float32, auc float64) ([]byte, error) {
	g, z := graph(RevisionLR, "logistic_regression",
		"w_i * z_i, z the standardised feature; they sum to the logit minus the bias", mean, invStd, auc)
	w := g.InitFloat("weights", []int64{int64(NumFeatures)}, f32(m.w[:NumFeatures]))
	b := g.InitFloat("bias", []int64{1}, []float32{float32(m.w[NumFeatures])})
	contrib := g.Mul(z, w)
	logit := g.Add(g.ReduceSum(contrib, true, 1), b)
	outputs(g, logit, contrib)
	return g.Marshal()
}

// export writes the MLP. Its contributions are gradient x input, computed in
// the graph: d logit / d z_i times z_i, where for a ReLU network the gradient
// is W1 · diag(relu'(pre)) · w2. It is the exact linear attribution of the
// locally linear piece the input falls in, relative to the training mean
// (z = 0); unlike logistic regression the contributions need not sum to the
// logit, because hidden biases move the piece's intercept.
func (m *mlpNet) export(mean, invStd []float32, auc float64) ([]byte, error) {
	g, z := graph(RevisionMLP, "mlp_relu_16",
		"gradient x input: (d logit / d z_i) * z_i, z the standardised feature, computed in-graph", mean, invStd, auc)
	F, H := int64(NumFeatures), int64(HiddenUnits)
	w1 := g.InitFloat("w1", []int64{F, H}, f32(m.w1()))
	b1 := g.InitFloat("b1", []int64{H}, f32(m.b1()))
	w2 := g.InitFloat("w2", []int64{H, 1}, f32(m.w2()))
	b2 := g.InitFloat("b2", []int64{1}, []float32{float32(*m.b2())})
	w1t := make([]float64, 0, F*H) // W1 transposed, [H][F], for the gradient
	for h := range HiddenUnits {
		for j := range NumFeatures {
			w1t = append(w1t, m.w1()[j*HiddenUnits+h])
		}
	}
	w1T := g.InitFloat("w1_t", []int64{H, F}, f32(w1t))
	w2row := g.InitFloat("w2_row", []int64{H}, f32(m.w2()))

	hidden := g.Relu(g.Add(g.MatMul(z, w1), b1))
	logit := g.Add(g.MatMul(hidden, w2), b2)
	// relu'(pre) is 1 where the unit is active: Sign of the (non-negative) activation.
	gradHidden := g.Mul(g.Sign(hidden), w2row)
	contrib := g.Mul(g.MatMul(gradHidden, w1T), z)
	outputs(g, logit, contrib)
	return g.Marshal()
}

// AUC is the ROC area under the curve of scores against labels: the chance
// that a random positive scores above a random negative (ties count half).
// It returns NaN when either class is missing.
func AUC(scores []float64, labels []bool) float64 {
	idx := make([]int, len(scores))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return scores[idx[a]] < scores[idx[b]] })
	var pos, neg, rankSum float64
	for i := 0; i < len(idx); {
		j := i
		for j < len(idx) && scores[idx[j]] == scores[idx[i]] {
			j++
		}
		avgRank := float64(i+j+1) / 2 // ranks i+1 .. j, averaged over the tie
		for _, k := range idx[i:j] {
			if labels[k] {
				pos++
				rankSum += avgRank
			} else {
				neg++
			}
		}
		i = j
	}
	if pos == 0 || neg == 0 {
		return math.NaN()
	}
	return (rankSum - pos*(pos+1)/2) / (pos * neg)
}
