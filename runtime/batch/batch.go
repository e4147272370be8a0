// Package batch is the dynamic batcher of one revision: it coalesces the rows
// of concurrent requests into one ONNX Runtime call (up to MaxBatch rows, or
// whatever arrived within MaxDelay of the first), runs it on the session
// pool, and hands each request its own rows of the outputs.
package batch

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pilotlight/pilotlight/functions/tensor"
)

// Runner runs one batch; the session pool satisfies it.
type Runner interface {
	Run(ctx context.Context, inputs []*tensor.Tensor) (map[string]*tensor.Tensor, time.Duration, error)
}

// Config bounds a batch.
type Config struct {
	MaxBatch int           // rows per ONNX call
	MaxDelay time.Duration // the longest a request waits for company
	// Parallel is how many batches may run at once (the session pool size).
	Parallel int
	// Observe, when set, is called after each batch with its rows, requests and run time.
	Observe func(rows, requests int, run time.Duration, err error)
}

// ErrStopped is returned for requests submitted after Stop.
var ErrStopped = errors.New("batcher stopped")

// Batcher coalesces requests for one revision.
type Batcher struct {
	cfg     Config
	run     Runner
	in      chan *call
	running chan struct{} // semaphore of Parallel
	wg      sync.WaitGroup
	stop    chan struct{}
	once    sync.Once
	// accepting guards sends on in against Stop: Submit enqueues under the
	// read lock while stopped is false, Stop sets stopped under the write
	// lock, so every call Submit enqueued is in the channel before the loop
	// drains it.
	accepting sync.RWMutex
	stopped   bool
	// after, when set (tests), replaces the MaxDelay timer.
	after func(time.Duration) <-chan time.Time
	// lastRequests is how many requests the previous batch held: a lone
	// request after a lone request does not wait for company that is not coming.
	lastRequests int
	// pending counts Submit calls under way: more than one means company.
	pending atomic.Int64
	// accepted counts Submit calls whose rows the batcher holds (enqueued,
	// result not yet returned): Stop owes each of them a result.
	accepted atomic.Int64
}

type call struct {
	ctx    context.Context
	inputs []*tensor.Tensor
	rows   int
	key    string
	done   chan result
	// queued is when a traced request joined the queue (zero when untraced).
	queued time.Time
}

type result struct {
	outputs map[string]*tensor.Tensor
	err     error
}

// New starts a batcher over run.
func New(cfg Config, run Runner) *Batcher { return start(cfg, run, nil) }

// start is New with after replacing the MaxDelay timer when set (tests).
func start(cfg Config, run Runner, after func(time.Duration) <-chan time.Time) *Batcher {
	if cfg.MaxBatch < 1 {
		cfg.MaxBatch = 1
	}
	if cfg.Parallel < 1 {
		cfg.Parallel = 1
	}
	b := &Batcher{cfg: cfg, run: run, in: make(chan *call, 4*cfg.MaxBatch), running: make(chan struct{}, cfg.Parallel), stop: make(chan struct{}), after: after}
	b.wg.Add(1)
	go b.loop()
	return b
}

// Submit queues rows (every input with the same first dimension, rows) and
// waits for this request's rows of every output. A request with more rows
// than MaxBatch runs alone.
func (b *Batcher) Submit(ctx context.Context, inputs []*tensor.Tensor, rows int) (map[string]*tensor.Tensor, error) {
	b.pending.Add(1)
	defer b.pending.Add(-1)
	c := &call{ctx: ctx, inputs: inputs, rows: rows, key: signature(inputs), done: make(chan result, 1)}
	if traced(ctx) {
		c.queued = time.Now()
	}
	b.accepting.RLock()
	if b.stopped {
		b.accepting.RUnlock()
		return nil, ErrStopped
	}
	select {
	case b.in <- c:
	case <-ctx.Done():
		b.accepting.RUnlock()
		return nil, ctx.Err()
	}
	b.accepted.Add(1)
	defer b.accepted.Add(-1)
	b.accepting.RUnlock()
	select {
	case r := <-c.done:
		return r.outputs, r.err
	case <-ctx.Done():
		// The batch may still run; its result is dropped (done is buffered).
		return nil, ctx.Err()
	}
}

// Stop finishes every queued batch and stops the loop; later Submits fail.
func (b *Batcher) Stop() {
	b.once.Do(func() {
		// The loop keeps consuming while Stop waits here for enqueues under way.
		b.accepting.Lock()
		b.stopped = true
		b.accepting.Unlock()
		close(b.stop)
	})
	b.wg.Wait()
}

// signature says which requests can share a batch: same input names,
// datatypes and trailing dimensions.
func signature(inputs []*tensor.Tensor) string {
	var sb strings.Builder
	for _, t := range inputs {
		sb.WriteString(t.Name)
		sb.WriteByte(':')
		sb.WriteString(string(t.Datatype))
		if len(t.Shape) == 0 {
			sb.WriteString(",scalar") // never batched (the instance turns batching off), but signed
		}
		for i := 1; i < len(t.Shape); i++ {
			fmt.Fprintf(&sb, ",%d", t.Shape[i])
		}
		sb.WriteByte(';')
	}
	return sb.String()
}

func (b *Batcher) loop() {
	defer b.wg.Done()
	var carry *call
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		first := carry
		carry = nil
		if first == nil {
			select {
			case first = <-b.in:
			case <-b.stop:
				b.drain()
				return
			}
		}
		batch := []*call{first}
		rows := first.rows
		// Waiting for company only pays when there is company: other requests
		// are under way, queued, or were batched last time. A lone caller at
		// low load is dispatched at once instead of paying MaxDelay.
		busy := b.pending.Load() > 1 || b.lastRequests > 1 || len(b.in) > 0
		// With company expected, wait up to MaxDelay for it; otherwise take
		// only what is already queued (wait stays nil, so the select falls
		// through to default).
		var wait <-chan time.Time
		if rows < b.cfg.MaxBatch && b.cfg.MaxDelay > 0 && busy {
			if b.after != nil {
				wait = b.after(b.cfg.MaxDelay)
			} else {
				timer.Reset(b.cfg.MaxDelay)
				wait = timer.C
			}
		}
	collect:
		for rows < b.cfg.MaxBatch {
			var c *call
			if wait != nil {
				select {
				case c = <-b.in:
				case <-wait:
					break collect
				case <-b.stop:
					break collect
				}
			} else {
				select {
				case c = <-b.in:
				default:
					break collect
				}
			}
			if c.key != first.key || rows+c.rows > b.cfg.MaxBatch {
				carry = c
				break
			}
			batch = append(batch, c)
			rows += c.rows
		}
		if wait != nil && b.after == nil && !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		b.lastRequests = len(batch)
		b.dispatch(batch)
	}
}

// drain runs whatever is still queued after Stop, so no accepted request is lost.
func (b *Batcher) drain() {
	for {
		select {
		case c := <-b.in:
			b.dispatch([]*call{c})
		default:
			return
		}
	}
}

func (b *Batcher) dispatch(batch []*call) {
	live := batch[:0]
	for _, c := range batch {
		if c.ctx.Err() == nil {
			live = append(live, c)
		}
	}
	if len(live) == 0 {
		return
	}
	b.running <- struct{}{}
	b.wg.Add(1)
	go func() {
		defer func() { <-b.running; b.wg.Done() }()
		b.execute(live)
	}()
}

func (b *Batcher) execute(batch []*call) {
	rows := 0
	for _, c := range batch {
		rows += c.rows
	}
	inputs := make([]*tensor.Tensor, len(batch[0].inputs))
	for i := range inputs {
		parts := make([]*tensor.Tensor, len(batch))
		for j, c := range batch {
			parts[j] = c.inputs[i]
		}
		t, err := tensor.Concat(parts)
		if err != nil {
			b.fail(batch, err)
			return
		}
		inputs[i] = t
	}
	// The batch runs to completion even if its first requester gives up:
	// the others still want their rows.
	var started time.Time
	if tracedBatch(batch) {
		started = time.Now()
	}
	out, took, err := b.run.Run(context.WithoutCancel(batch[0].ctx), inputs)
	if !started.IsZero() {
		traceBatch(batch, rows, started, time.Now(), err)
	}
	if b.cfg.Observe != nil {
		b.cfg.Observe(rows, len(batch), took, err)
	}
	if err != nil {
		b.fail(batch, err)
		return
	}
	if len(batch) == 1 {
		// Nothing to split: a request alone gets the outputs whole, whatever their shape.
		batch[0].done <- result{outputs: out}
		return
	}
	for name, t := range out {
		if len(t.Shape) == 0 || t.Shape[0] != int64(rows) {
			b.fail(batch, fmt.Errorf("model output %q has shape %v: the runtime batches along the first dimension, which must equal the %d input rows", name, t.Shape, rows))
			return
		}
	}
	from := int64(0)
	for _, c := range batch {
		to := from + int64(c.rows)
		mine := make(map[string]*tensor.Tensor, len(out))
		for name, t := range out {
			mine[name] = t.Rows(from, to)
		}
		c.done <- result{outputs: mine}
		from = to
	}
}

func (b *Batcher) fail(batch []*call, err error) {
	for _, c := range batch {
		c.done <- result{err: err}
	}
}
