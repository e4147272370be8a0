package rollout

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/flags"
	"github.com/pilotlight/pilotlight/functions"
)

const twoFlags = `{"flags": {
  "fraud-revision": {"state": "ENABLED", "variants": {"stable": "fraud-00001", "canary": "fraud-00002"}, "defaultVariant": "stable"},
  "recommend-revision": {"state": "ENABLED", "variants": {"stable": "recommend-00001"}, "defaultVariant": "stable"}}}`

var configMaps = schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}

// apiServer is a fake clientset holding the flag ConfigMap, whose updates
// are checked against the stored resourceVersion as the API server does
// (the fake's own tracker does not check it).
func apiServer(t *testing.T) *fake.Clientset {
	t.Helper()
	cs := fake.NewSimpleClientset(&corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: "pilotlight", Name: "pilotlight-flags", ResourceVersion: "1"},
		Data:       map[string]string{ConfigMapDataKey: twoFlags}})
	var mu sync.Mutex
	cs.PrependReactor("update", "configmaps", func(a k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		cm := a.(k8stesting.UpdateAction).GetObject().(*corev1.ConfigMap)
		cur, err := cs.Tracker().Get(configMaps, cm.Namespace, cm.Name)
		if err != nil {
			return true, nil, err
		}
		stored := cur.(*corev1.ConfigMap).ResourceVersion
		if cm.ResourceVersion != stored {
			return true, nil, apierrors.NewConflict(configMaps.GroupResource(), cm.Name,
				fmt.Errorf("the object has been modified; please apply your changes to the latest version (have %s, stored %s)", cm.ResourceVersion, stored))
		}
		n, _ := strconv.Atoi(stored)
		next := cm.DeepCopy()
		next.ResourceVersion = strconv.Itoa(n + 1)
		return true, next, cs.Tracker().Update(configMaps, next, cm.Namespace)
	})
	return cs
}

func storedFlags(t *testing.T, cs *fake.Clientset) *flags.Set {
	t.Helper()
	cm, err := cs.CoreV1().ConfigMaps("pilotlight").Get(context.Background(), "pilotlight-flags", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := flags.Parse([]byte(cm.Data[ConfigMapDataKey]))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestConfigMapEditRetriesAConflictWithoutLosingTheOtherWrite: another
// writer changes the ConfigMap between this edit's read and its update;
// the update is refused (409), the edit is re-read and re-applied, and
// both changes are in the result.
func TestConfigMapEditRetriesAConflictWithoutLosingTheOtherWrite(t *testing.T) {
	cs := apiServer(t)
	other := &ConfigMapStore{Client: cs, Namespace: "pilotlight", Name: "pilotlight-flags"}
	var conflicts atomic.Int32
	s := &ConfigMapStore{Client: cs, Namespace: "pilotlight", Name: "pilotlight-flags", OnConflict: func() { conflicts.Add(1) }}
	interfered := false
	err := s.Edit(context.Background(), "fraud-revision", func(ff *flags.FlagEdit) {
		if !interfered { // the other replica writes after this read
			interfered = true
			if err := other.Edit(context.Background(), "recommend-revision", func(o *flags.FlagEdit) { o.SetStatic(o.VariantFor("recommend-00002")) }); err != nil {
				t.Fatal(err)
			}
		}
		ff.SetSplit(ff.VariantFor("fraud-00001"), ff.VariantFor("fraud-00002"), 25)
	})
	if err != nil {
		t.Fatal(err)
	}
	if conflicts.Load() != 1 {
		t.Fatalf("%d conflicts, want 1", conflicts.Load())
	}
	set := storedFlags(t, cs)
	if f, _ := set.Flag("recommend-revision"); f.DefaultVariant == nil || *f.DefaultVariant != "recommend-00002" {
		t.Fatalf("the other writer's change was lost: %+v", f)
	}
	if split := set.Evaluate("fraud-revision", map[string]any{"targetingKey": "u"}); split.Reason != flags.ReasonTargetingMatch {
		t.Fatalf("this edit's split is missing: %+v", split)
	}
}

// TestConfigMapConcurrentEditsAllLand: writers racing on one ConfigMap
// (rollouts of different functions on different replicas, an operator's
// edit) each add a variant; every one is there at the end.
func TestConfigMapConcurrentEditsAllLand(t *testing.T) {
	cs := apiServer(t)
	var conflicts atomic.Int32
	s := &ConfigMapStore{Client: cs, Namespace: "pilotlight", Name: "pilotlight-flags", OnConflict: func() { conflicts.Add(1) }}
	const writers = 6
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- s.Edit(context.Background(), "fraud-revision", func(ff *flags.FlagEdit) { ff.VariantFor(fmt.Sprintf("fraud-%05d", 10+i)) })
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	f, _ := storedFlags(t, cs).Flag("fraud-revision")
	for i := range writers {
		if _, ok := f.Variants[fmt.Sprintf("fraud-%05d", 10+i)]; !ok {
			t.Fatalf("writer %d's variant was lost (conflicts retried: %d): %v", i, conflicts.Load(), f.Variants)
		}
	}
	t.Logf("%d writers, %d conflicts retried", writers, conflicts.Load())
}

// TestFollowConfigMapSeesWritesThroughTheWatch: a write through the API
// reaches a follower without any file, and a document that does not
// parse leaves the last good one.
func TestFollowConfigMapSeesWritesThroughTheWatch(t *testing.T) {
	cs := apiServer(t)
	// The fake API server drops what is written between a list and the
	// watch that follows it (a real one replays from the list's
	// resourceVersion): the writes below wait until the watch is open.
	watching := make(chan struct{}, 1)
	cs.PrependWatchReactor("configmaps", func(a k8stesting.Action) (bool, watch.Interface, error) {
		w, err := cs.Tracker().Watch(configMaps, a.GetNamespace())
		select {
		case watching <- struct{}{}:
		default:
		}
		return true, w, err
	})
	s := &ConfigMapStore{Client: cs, Namespace: "pilotlight", Name: "pilotlight-flags"}
	got := make(chan string, 16)
	var up atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_ = s.Follow(ctx, func(raw []byte) error {
			if _, err := flags.Parse(raw); err != nil {
				got <- "rejected"
				return err
			}
			got <- string(raw)
			return nil
		}, up.Store, nil)
	}()
	wait := func(want string) time.Duration {
		t.Helper()
		start := time.Now()
		select {
		case doc := <-got:
			if !strings.Contains(doc, want) {
				t.Fatalf("got %.80q, want it to contain %q", doc, want)
			}
		case <-time.After(30 * time.Second): // arrival, not speed: -race on a loaded machine is slow
			t.Fatalf("nothing arrived for %q", want)
		}
		return time.Since(start)
	}
	wait("recommend-00001") // the initial list
	if !up.Load() {
		t.Fatal("following, but not reported healthy")
	}
	select {
	case <-watching:
	case <-time.After(30 * time.Second):
		t.Fatal("the follower never opened its watch")
	}
	start := time.Now()
	if err := s.Edit(ctx, "fraud-revision", func(ff *flags.FlagEdit) { ff.SetStatic(ff.VariantFor("fraud-00002")) }); err != nil {
		t.Fatal(err)
	}
	wait(`"defaultVariant": "canary"`)
	t.Logf("a write reached the follower in %s (fake API server, in process)", time.Since(start))
	cm, _ := cs.CoreV1().ConfigMaps("pilotlight").Get(ctx, "pilotlight-flags", metav1.GetOptions{})
	cm.Data[ConfigMapDataKey] = "{not json"
	if _, err := cs.CoreV1().ConfigMaps("pilotlight").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("rejected")
}

type fakeLeadership struct {
	leading bool
	holder  string
}

func (f fakeLeadership) Leading() bool  { return f.leading }
func (f fakeLeadership) Holder() string { return f.holder }

func TestOnlyTheLeaderStartsRollouts(t *testing.T) {
	c := New(Config{FlagsPath: "unused", Functions: []*functions.Manifest{fraudFn()}, Leader: fakeLeadership{false, "router-7f9-abc"}})
	_, err := c.Start(Spec{Function: "fraud", To: "fraud-00002"})
	var ce *ConflictError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), `the leader (Lease holder) is "router-7f9-abc"`) {
		t.Fatalf("a follower started a rollout: %v", err)
	}
}

// TestLeaseHasOneLeaderAndHandsOver: two replicas campaign for one Lease;
// exactly one leads at any moment, and when it stops (a replica shutting
// down releases the Lease) the other takes over.
func TestLeaseHasOneLeaderAndHandsOver(t *testing.T) {
	cs := fake.NewSimpleClientset()
	newLeader := func(id string) *Leader {
		l, err := NewLeader(LeaderConfig{Client: cs, Namespace: "pilotlight", Name: "pilotlight-rollouts", Identity: id,
			LeaseDuration: time.Second, RenewDeadline: 500 * time.Millisecond, RetryPeriod: 100 * time.Millisecond, Logger: quietLog()})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	a, b := newLeader("router-a"), newLeader("router-b")
	ctxA, stopA := context.WithCancel(context.Background())
	ctxB, stopB := context.WithCancel(context.Background())
	defer stopB()
	doneA := make(chan struct{})
	go func() { a.Run(ctxA); close(doneA) }()
	go b.Run(ctxB)

	var both atomic.Bool
	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	go func() {
		for watchCtx.Err() == nil {
			if a.Leading() && b.Leading() {
				both.Store(true)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	waitFor := func(what string, cond func() bool) time.Duration {
		t.Helper()
		start := time.Now()
		for !cond() {
			if time.Since(start) > 10*time.Second {
				t.Fatalf("%s: not within 10s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
		return time.Since(start)
	}
	waitFor("a leader", func() bool { return a.Leading() || b.Leading() })
	leader, follower, stop, done := a, b, stopA, doneA
	if b.Leading() {
		// b won: stop b instead (its Run ends when its ctx does).
		leader, follower, stop = b, a, stopB
		done = make(chan struct{})
		go func() {
			for b.Leading() {
				time.Sleep(5 * time.Millisecond)
			}
			close(done)
		}()
	}
	// The follower learns the holder at its next try (RetryPeriod), not at
	// once: a cold run caught it still reading "".
	want := map[*Leader]string{a: "router-a", b: "router-b"}[leader]
	waitFor("the follower to see the holder "+want, func() bool { return follower.Holder() == want })
	start := time.Now()
	stop()
	<-done
	waitFor("hand-over", follower.Leading)
	t.Logf("hand-over after the leader released the Lease: %s", time.Since(start))
	if both.Load() {
		t.Fatal("both replicas led at once")
	}
	stopA()
	<-doneA
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

type switchLeadership struct{ leading atomic.Bool }

func (s *switchLeadership) Leading() bool  { return s.leading.Load() }
func (s *switchLeadership) Holder() string { return "router-b" }

// TestALeaderThatLosesTheLeaseStopsWriting: once another replica holds
// the Lease, this one's rollout ends without a flag write (neither the
// next step nor a rollback), so two replicas never both drive.
func TestALeaderThatLosesTheLeaseStopsWriting(t *testing.T) {
	r := newRig(t)
	lead := &switchLeadership{}
	lead.leading.Store(true)
	r.c = New(Config{FlagsPath: r.path, Functions: []*functions.Manifest{fraudFn()}, Gatherer: r.g, Registerer: prometheus.NewRegistry(),
		Logger: quietLog(), Leader: lead})
	t.Cleanup(r.c.Close)
	r.g.set(50, 0, time.Millisecond)
	spec := canarySpec()
	spec.Steps, spec.Interval = []int{50, 100}, 300*time.Millisecond
	if _, err := r.c.Start(spec); err != nil {
		t.Fatal(err)
	}
	// The first step is written at once; the Lease is lost during its interval.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if st, _ := r.c.Status("fraud"); st.Weight == 50 && st.Phase == PhaseCanary {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first step was never written")
		}
		time.Sleep(5 * time.Millisecond)
	}
	before, err := os.ReadFile(r.path)
	if err != nil {
		t.Fatal(err)
	}
	lead.leading.Store(false)
	st := r.wait(t)
	last := st.Decisions[len(st.Decisions)-1]
	if st.State != StateFailed || !strings.Contains(last.Reason, "no longer holds the rollout Lease") {
		t.Fatalf("state %s: %s", st.State, last.Reason)
	}
	after, _ := os.ReadFile(r.path)
	if string(after) != string(before) {
		t.Fatal("a replica without the Lease wrote the flags")
	}
}

// TestASuccessorRollsBackARolloutLeftMidway: replica A drives a rollout
// through the ConfigMap and loses the Lease at its first step; replica B
// takes the Lease over, finds the rollout recorded as running, and rolls
// it back in one write: the flags serve the stable revision again, and
// both the record and B's status say why.
func TestASuccessorRollsBackARolloutLeftMidway(t *testing.T) {
	cs := apiServer(t)
	store := func() *ConfigMapStore {
		return &ConfigMapStore{Client: cs, Namespace: "pilotlight", Name: "pilotlight-flags"}
	}
	leadA, leadB := &switchLeadership{}, &switchLeadership{}
	leadA.leading.Store(true)
	g := newFeeding()
	g.set(50, 0, time.Millisecond)
	a := New(Config{Functions: []*functions.Manifest{fraudFn()}, Gatherer: g, Registerer: prometheus.NewRegistry(), Logger: quietLog(), Flags: store(), Leader: leadA})
	t.Cleanup(a.Close)
	spec := canarySpec()
	spec.Interval = 10 * time.Second
	if _, err := a.Start(spec); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for st, _ := a.Status("fraud"); st.Weight != 50; st, _ = a.Status("fraud") {
		if time.Now().After(deadline) {
			t.Fatal("the first step was never written")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if e := storedFlags(t, cs).Evaluate("fraud-revision", map[string]any{"targetingKey": "u"}); e.Reason != flags.ReasonTargetingMatch {
		t.Fatalf("A's 50%% split is not in the ConfigMap: %+v", e)
	}
	leadA.leading.Store(false) // A is cut off; B wins the Lease
	leadB.leading.Store(true)
	b := New(Config{Functions: []*functions.Manifest{fraudFn()}, Gatherer: g, Registerer: prometheus.NewRegistry(), Logger: quietLog(), Flags: store(), Leader: leadB})
	t.Cleanup(b.Close)
	rolled, err := b.Resume(context.Background())
	if err != nil || len(rolled) != 1 || rolled[0] != "fraud" {
		t.Fatalf("Resume = %v, %v", rolled, err)
	}
	set := storedFlags(t, cs)
	if e := set.Evaluate("fraud-revision", map[string]any{"targetingKey": "u"}); e.Value != "fraud-00001" || e.Reason != flags.ReasonStatic {
		t.Fatalf("not rolled back: %+v", e)
	}
	recs, _ := store().RecordedRollouts(context.Background())
	if recs["fraud"].State != StateRolledBack {
		t.Fatalf("record %+v", recs["fraud"])
	}
	st, _ := b.Status("fraud")
	if st.State != StateRolledBack || st.Decisions[0].Check != CheckLeader || !strings.Contains(st.Decisions[0].Reason, "stopped holding the Lease mid-rollout") {
		t.Fatalf("B's status %+v", st)
	}
	// Nothing is driven twice: a second take-over finds nothing to do.
	if rolled, _ := b.Resume(context.Background()); len(rolled) != 0 {
		t.Fatalf("rolled back again: %v", rolled)
	}
}
