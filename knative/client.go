package knative

import (
	"errors"
	"fmt"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	servingclientset "knative.dev/serving/pkg/client/clientset/versioned"
	autoscalingclient "knative.dev/serving/pkg/client/clientset/versioned/typed/autoscaling/v1alpha1"
	servingclient "knative.dev/serving/pkg/client/clientset/versioned/typed/serving/v1"
)

// ErrNoCluster is what NewClient's error wraps when no cluster is configured
// at all (no kubeconfig anywhere and not inside a pod).
var ErrNoCluster = errors.New("no cluster configured")

// NewClient connects to a cluster's Knative Serving API the way kubectl and
// kn do: the kubeconfig file given, else $KUBECONFIG, else ~/.kube/config,
// else (inside a pod) the in-cluster service account. kubeContext selects a
// context other than the current one. It returns the API server's address
// for messages.
func NewClient(kubeconfig, kubeContext string) (servingclient.ServingV1Interface, string, error) {
	cfg, err := restConfig(kubeconfig, kubeContext)
	if err != nil {
		return nil, "", err
	}
	cs, err := servingclientset.NewForConfig(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("knative serving client for %s: %w", cfg.Host, err)
	}
	return cs.ServingV1(), cfg.Host, nil
}

// NewAutoscalingClient is NewClient for Knative's PodAutoscalers, whose
// min-scale a blue-green rollout raises (Deployer.SetMinScale).
func NewAutoscalingClient(kubeconfig, kubeContext string) (autoscalingclient.AutoscalingV1alpha1Interface, error) {
	cfg, err := restConfig(kubeconfig, kubeContext)
	if err != nil {
		return nil, err
	}
	cs, err := servingclientset.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("knative autoscaling client for %s: %w", cfg.Host, err)
	}
	return cs.AutoscalingV1alpha1(), nil
}

// NewKubeClient is NewClient for the core Kubernetes API (ConfigMaps,
// Leases): the flag ConfigMap and the rollout Lease.
func NewKubeClient(kubeconfig, kubeContext string) (kubernetes.Interface, string, error) {
	cfg, err := restConfig(kubeconfig, kubeContext)
	if err != nil {
		return nil, "", err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("kubernetes client for %s: %w", cfg.Host, err)
	}
	return cs, cfg.Host, nil
}

// restConfig finds the cluster as kubectl does (see NewClient).
func restConfig(kubeconfig, kubeContext string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
		&clientcmd.ConfigOverrides{CurrentContext: kubeContext}).ClientConfig()
	if clientcmd.IsEmptyConfig(err) {
		return nil, fmt.Errorf("load cluster config: %w (pass --kubeconfig, set $KUBECONFIG, write ~/.kube/config, or run in a pod)", ErrNoCluster)
	}
	if err != nil {
		return nil, fmt.Errorf("load cluster config (--kubeconfig, $KUBECONFIG, ~/.kube/config or in-cluster): %w", err)
	}
	return cfg, nil
}
