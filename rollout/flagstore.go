package rollout

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"

	"github.com/pilotlight/pilotlight/flags"
)

// FlagStore is where the controller reads and writes the flag state the
// router routes by: the flag file on one machine (FileStore), the
// ConfigMap every router replica follows in a cluster (ConfigMapStore).
// Edit is a read-modify-write of one flag that never loses another
// writer's change to the document.
type FlagStore interface {
	// Open reads flag key as it is now.
	Open(ctx context.Context, key string) (*flags.FlagEdit, error)
	// Edit applies edit to flag key of the current document and writes it.
	Edit(ctx context.Context, key string, edit func(*flags.FlagEdit)) error
}

// FileStore is the flag file: edits are serialised in this process (the
// only writer: rollouts of two functions edit the same file) and written
// in one atomic rename; Reload, when set, has the router serve the write
// at once.
type FileStore struct {
	Path   string
	Reload func()
	mu     sync.Mutex
}

// Open implements FlagStore.
func (s *FileStore) Open(_ context.Context, key string) (*flags.FlagEdit, error) {
	return flags.OpenFlagEdit(s.Path, key)
}

// Edit implements FlagStore.
func (s *FileStore) Edit(_ context.Context, key string, edit func(*flags.FlagEdit)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ff, err := flags.OpenFlagEdit(s.Path, key)
	if err != nil {
		return err
	}
	edit(ff)
	if err := ff.Write(); err != nil {
		return err
	}
	if s.Reload != nil {
		s.Reload()
	}
	return nil
}

// ConfigMapDataKey is the ConfigMap key that holds the flag document, as
// the router's mounted ConfigMap has it (config/router).
const ConfigMapDataKey = "flags.json"

// ConfigMapStore is the flag document in a ConfigMap, written through the
// Kubernetes API with optimistic concurrency: each update carries the
// resourceVersion it read, the API server refuses it (409 Conflict) when
// another writer changed the ConfigMap since, and the edit is re-read and
// re-applied on the new version, so another writer's change is never
// lost (client-go's retry.RetryOnConflict: 5 attempts, 10 ms apart, with
// jitter). Router replicas follow the same ConfigMap (FollowConfigMap).
type ConfigMapStore struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string
	Key       string // the data key; "" is ConfigMapDataKey
	// OnRecords, when set, is told the rollout records each time Follow
	// delivers the ConfigMap (Controller.FollowRecords).
	OnRecords func(map[string]RolloutRecord)
	// OnConflict, when set, is told of each conflict that was retried (metrics, tests).
	OnConflict func()
}

func (s *ConfigMapStore) key() string {
	if s.Key == "" {
		return ConfigMapDataKey
	}
	return s.Key
}

func (s *ConfigMapStore) source() string {
	return fmt.Sprintf("ConfigMap %s/%s key %s", s.Namespace, s.Name, s.key())
}

func (s *ConfigMapStore) get(ctx context.Context) (*corev1.ConfigMap, error) {
	cm, err := s.Client.CoreV1().ConfigMaps(s.Namespace).Get(ctx, s.Name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", s.source(), err)
	}
	return cm, nil
}

// Open implements FlagStore.
func (s *ConfigMapStore) Open(ctx context.Context, key string) (*flags.FlagEdit, error) {
	cm, err := s.get(ctx)
	if err != nil {
		return nil, err
	}
	return flags.EditBytes([]byte(cm.Data[s.key()]), s.source(), key)
}

// Edit implements FlagStore.
func (s *ConfigMapStore) Edit(ctx context.Context, key string, edit func(*flags.FlagEdit)) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cm, err := s.get(ctx)
		if err != nil {
			return err
		}
		ff, err := flags.EditBytes([]byte(cm.Data[s.key()]), s.source(), key)
		if err != nil {
			return err
		}
		edit(ff)
		raw, err := ff.Bytes()
		if err != nil {
			return err
		}
		cm = cm.DeepCopy()
		cm.Data[s.key()] = string(raw) // cm.ResourceVersion is the one read: the server checks it
		_, err = s.Client.CoreV1().ConfigMaps(s.Namespace).Update(ctx, cm, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			if s.OnConflict != nil {
				s.OnConflict()
			}
			return err // retried on a fresh read
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", s.source(), err)
		}
		return nil
	})
}

// Follow keeps apply fed with the ConfigMap's flag document until ctx
// ends: an informer lists the ConfigMap and watches it through the API,
// so a write reaches every replica within the watch's latency, not the
// kubelet's volume sync period (about a minute). healthy is told whether
// the API is being followed: false once a list or watch fails (the
// mounted file, a flags.Watcher's FileFallback, serves meanwhile), true
// again once a document arrives. A document that does not parse is
// logged by apply and the last good one stays.
func (s *ConfigMapStore) Follow(ctx context.Context, apply func(raw []byte) error, healthy func(bool), log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	lw := s.listWatch()
	deliver := func(obj any) {
		cm, ok := obj.(*corev1.ConfigMap)
		if !ok || cm.Name != s.Name {
			return
		}
		raw, ok := cm.Data[s.key()]
		if !ok {
			log.Error("flag ConfigMap has no flag document; keeping the last good flags", "configmap", s.source())
			return
		}
		healthy(true)
		_ = apply([]byte(raw))
		if s.OnRecords != nil {
			recs, err := recordsOf(cm)
			if err != nil {
				log.Error("flag ConfigMap's rollout records do not read; shadow copies on this replica keep their last setting", "configmap", s.source(), "err", err)
				return
			}
			s.OnRecords(recs)
		}
	}
	informer := cache.NewSharedIndexInformer(lw, &corev1.ConfigMap{}, 0, cache.Indexers{})
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    deliver,
		UpdateFunc: func(_, obj any) { deliver(obj) },
	}); err != nil {
		return err
	}
	if err := informer.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
		healthy(false)
		log.Warn("following the flag ConfigMap failed; the mounted file serves until the API answers", "configmap", s.source(), "err", err)
	}); err != nil {
		return err
	}
	informer.Run(ctx.Done())
	return nil
}

// listWatch lists and watches the one ConfigMap through the typed client
// (which the fake clientset also implements).
func (s *ConfigMapStore) listWatch() *cache.ListWatch {
	sel := fields.OneTermEqualSelector("metadata.name", s.Name).String()
	cms := s.Client.CoreV1().ConfigMaps(s.Namespace)
	return &cache.ListWatch{
		ListFunc: func(o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel
			return cms.List(context.Background(), o)
		},
		WatchFunc: func(o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel
			return cms.Watch(context.Background(), o)
		},
	}
}
