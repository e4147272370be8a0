package agent

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// WatchPods feeds a the pods of node in namespace (the functions'; all
// nodes' when node is empty) from the API and returns once the first list arrived. The API is the agent's
// one source of pod labels: containerd's CRI socket would also give them,
// but mounting it hands the agent every container on the node, where a
// watch of pods needs only read access to them (config/security/rbac.yaml).
// The watch is also how it learns, within milliseconds, that a pod turned
// Ready.
func WatchPods(ctx context.Context, kube kubernetes.Interface, namespace, node string, a *Agent) error {
	sel := fields.Everything()
	if node != "" {
		sel = fields.OneTermEqualSelector("spec.nodeName", node)
	}
	lw := cache.NewListWatchFromClient(kube.CoreV1().RESTClient(), "pods", namespace, sel)
	inf := cache.NewSharedIndexInformer(lw, &corev1.Pod{}, 0, cache.Indexers{})
	changed := func(obj any) {
		if p, ok := obj.(*corev1.Pod); ok {
			a.PodChanged(podOf(p))
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    changed,
		UpdateFunc: func(_, obj any) { changed(obj) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				a.PodDeleted(string(p.UID))
			}
		},
	}); err != nil {
		return err
	}
	go inf.Run(ctx.Done())
	sync, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if !cache.WaitForCacheSync(sync.Done(), inf.HasSynced) {
		return fmt.Errorf("list the pods of node %q in %s: no answer within a minute (the agent's service account needs get, list and watch on pods there: config/security/rbac.yaml)", node, namespace)
	}
	return nil
}

func podOf(p *corev1.Pod) Pod {
	ready := false
	for _, c := range p.Status.Conditions {
		ready = ready || (c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue)
	}
	return Pod{UID: string(p.UID), Function: p.Labels[LabelService], Revision: p.Labels[LabelRevision], Ready: ready}
}
