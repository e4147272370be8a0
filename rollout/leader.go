package rollout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Leadership says whether this replica drives rollouts, and who does.
type Leadership interface {
	Leading() bool
	Holder() string // the Lease holder's identity ("" when unknown)
}

// Lease timings, client-go's leaderelection defaults as Kubernetes'
// controllers use them: a dead leader's Lease is taken over within
// leaseDuration; a leader that cannot renew within renewDeadline stops
// leading before another can start.
const (
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
)

// LeaderConfig configures a Leader.
type LeaderConfig struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string // the Lease's name (pilotlight-rollouts)
	Identity  string // this replica (its pod name)
	// Zero: the defaults above.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	Logger                                    *slog.Logger
}

// Leader holds a coordination.k8s.io Lease with client-go's leader
// election, so that of several router replicas one drives rollouts: two
// never drive the same rollout. It satisfies Leadership.
type Leader struct {
	elector *leaderelection.LeaderElector
	leading atomic.Bool
	holder  atomic.Value // string
	onLead  atomic.Pointer[func(context.Context)]
}

// OnLead sets what runs each time this replica starts leading (the
// controller's Resume), after Leading reports true. Set it before Run.
func (l *Leader) OnLead(f func(context.Context)) { l.onLead.Store(&f) }

// NewLeader builds the elector; Run campaigns.
func NewLeader(cfg LeaderConfig) (*Leader, error) {
	if cfg.Client == nil || cfg.Namespace == "" || cfg.Name == "" || cfg.Identity == "" {
		return nil, errors.New("leader election needs a client, the Lease's namespace and name, and this replica's identity")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	l := &Leader{}
	l.holder.Store("")
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metaFor(cfg.Namespace, cfg.Name),
		Client:     cfg.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: cfg.Identity},
	}
	log := cfg.Logger.With("lease", cfg.Namespace+"/"+cfg.Name, "identity", cfg.Identity)
	el, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   orDefault(cfg.LeaseDuration, DefaultLeaseDuration),
		RenewDeadline:   orDefault(cfg.RenewDeadline, DefaultRenewDeadline),
		RetryPeriod:     orDefault(cfg.RetryPeriod, DefaultRetryPeriod),
		ReleaseOnCancel: true, // a replica shutting down hands over at once, not after leaseDuration
		Name:            cfg.Name,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				l.leading.Store(true)
				log.Info("leading: this replica drives rollouts")
				if f := l.onLead.Load(); f != nil {
					(*f)(ctx)
				}
			},
			OnStoppedLeading: func() {
				l.leading.Store(false)
				log.Info("stopped leading")
			},
			OnNewLeader: func(id string) { l.holder.Store(id) },
		},
	})
	if err != nil {
		return nil, fmt.Errorf("leader election: %w", err)
	}
	l.elector = el
	return l, nil
}

// Run campaigns for the Lease until ctx ends (then releases it), and
// campaigns again after losing it.
func (l *Leader) Run(ctx context.Context) {
	for ctx.Err() == nil {
		l.elector.Run(ctx) // returns when leadership is lost or ctx ends
	}
}

// Leading implements Leadership.
func (l *Leader) Leading() bool { return l.leading.Load() }

// Holder implements Leadership.
func (l *Leader) Holder() string { return l.holder.Load().(string) }

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func metaFor(namespace, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: namespace, Name: name}
}
