package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// The real node (Config.RealNode): containerd with runc, a CNI bridge,
// the kubelet and kube-proxy, all in the harness's network namespace.
const (
	// RealNodeName is the real node's name.
	RealNodeName = "pilotlight-node-0"
	// PodBridgeCIDR is the pods' range on the CNI bridge cni0; the
	// bridge itself holds its first address, the pods' gateway.
	PodBridgeCIDR = "10.244.1.0/24"
	// SandboxImage is the pause image hack/images builds from the
	// kubernetes module's pause.c and the node's containerd starts every
	// pod's sandbox from.
	SandboxImage = "registry.k8s.io/pause:3.10"
)

// startNode starts containerd, loads the images (Config.ImagesTar) into its
// k8s.io namespace, and starts the kubelet and kube-proxy; it returns once
// the node is Ready.
//
// Every process is a child of the test, so it shares the private mount
// namespace `ip netns exec` gave the test: the overlay, tmpfs and pod netns
// mounts containerd and the kubelet make never reach the machine's mount
// table, and vanish with the processes. The pods' cgroups live under
// Config.CgroupRoot, which hack/cluster/run.sh made and removes.
func (p *Plane) startNode(ctx context.Context) error {
	dir := p.path("node")
	cd := filepath.Join(dir, "containerd")
	for _, d := range []string{cd, filepath.Join(dir, "cni", "net.d"), filepath.Join(dir, "kubelet"), filepath.Join(dir, "pod-logs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	sock := filepath.Join(cd, "containerd.sock")
	conf := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[debug]
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = %[8]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[5]q
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  enable_unprivileged_ports = true
  # This machine's root lacks CAP_SYS_RESOURCE, so no process may lower
  # its oom_score_adj (the pause container asks for -998): containers get
  # no lower a score than containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = %[9]q
        Root = %[6]q
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %[7]q
    max_conf_num = 1
`, filepath.Join(cd, "root"), filepath.Join(cd, "state"), sock, filepath.Join(cd, "ttrpc.sock"),
		SandboxImage, filepath.Join(cd, "runc"), filepath.Join(dir, "cni", "net.d"), filepath.Join(cd, "opt"), runcBinary())
	if err := os.WriteFile(filepath.Join(cd, "config.toml"), []byte(conf), 0o644); err != nil {
		return err
	}
	// One bridge, host-local addresses, the gateway on the bridge: the
	// pods reach the API server and Knative's processes (on lo, 10.244.0.x)
	// through it, and every address stays inside the namespace.
	cni := fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "pilotlight",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, filepath.Join(dir, "cni", "ipam"), PodBridgeCIDR)
	if err := os.WriteFile(filepath.Join(dir, "cni", "net.d", "10-pilotlight.conflist"), []byte(cni), 0o644); err != nil {
		return err
	}
	// Bridged traffic between pods passes iptables, so kube-proxy's
	// Service rules see a pod calling a Service backed by another pod on
	// the same bridge (the sysctl is the namespace's own).
	if err := os.WriteFile("/proc/sys/net/bridge/bridge-nf-call-iptables", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("net.bridge.bridge-nf-call-iptables in the namespace: %w", err)
	}

	t := time.Now()
	containerd, err := exec.LookPath("containerd")
	if err != nil {
		return fmt.Errorf("containerd not found: install Debian's containerd (hack/deps/cluster.apt): %w", err)
	}
	if err := p.run("containerd", containerd, []string{"--config", filepath.Join(cd, "config.toml")}, nil); err != nil {
		return err
	}
	ctr := func(args ...string) ([]byte, error) {
		return exec.CommandContext(ctx, "ctr", append([]string{"--address", sock, "--namespace", "k8s.io"}, args...)...).CombinedOutput()
	}
	if err := p.waitFor(ctx, "containerd to answer", time.Minute, func(ctx context.Context) (bool, error) {
		_, err := ctr("version")
		return err == nil, nil
	}); err != nil {
		return err
	}
	p.Timings = append(p.Timings, Timing{"containerd answering", time.Since(t)})
	if p.cfg.ImagesTar != "" {
		t = time.Now()
		if out, err := ctr("images", "import", p.cfg.ImagesTar); err != nil {
			return fmt.Errorf("ctr images import %s: %w\n%s", p.cfg.ImagesTar, err, out)
		}
		p.Timings = append(p.Timings, Timing{"images imported into containerd", time.Since(t)})
		p.cfg.Log.Info("cluster: images imported", "tar", p.cfg.ImagesTar, "took", time.Since(t).Round(time.Millisecond))
	}

	t = time.Now()
	kc, err := p.writeKubeconfig("kubelet", p.tokenFor("node"))
	if err != nil {
		return err
	}
	resolv := filepath.Join(dir, "resolv.conf")
	// No cluster DNS: the data path reaches Services by address (the
	// activator and queue-proxy by pod IP, the router by its kubeconfig's
	// host), so pods get a resolver that answers nothing.
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.1\noptions ndots:1\n"), 0o644); err != nil {
		return err
	}
	kubelet := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %[1]q
cgroupsPerQOS: true
containerRuntimeEndpoint: unix://%[2]s
address: %[3]s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
authorization:
  mode: Webhook
clusterDomain: cluster.local
resolvConf: %[4]q
failSwapOn: false
podLogsDir: %[5]q
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%%
  nodefs.inodesFree: 1%%
  imagefs.available: 1%%
nodeStatusReportFrequency: 10s
nodeStatusUpdateFrequency: 2s
syncFrequency: 10s
fileCheckFrequency: 10s
protectKernelDefaults: false
localStorageCapacityIsolation: true
`, p.cfg.CgroupRoot, filepath.Join(cd, "containerd.sock"), APIServerIP, resolv, filepath.Join(dir, "pod-logs"))
	kcfg := filepath.Join(dir, "kubelet.yaml")
	if err := os.WriteFile(kcfg, []byte(kubelet), 0o644); err != nil {
		return err
	}
	if err := p.run("kubelet", p.bin("kubelet", p.cfg.K8sVersion), []string{
		"--config=" + kcfg, "--kubeconfig=" + kc, "--root-dir=" + filepath.Join(dir, "kubelet"),
		"--cert-dir=" + filepath.Join(dir, "kubelet", "pki"), "--hostname-override=" + RealNodeName,
		"--node-ip=" + APIServerIP, "--v=1",
	}, nil); err != nil {
		return err
	}

	// kube-proxy: Services' addresses (10.96.0.0/16) to endpoints, in the
	// namespace's iptables. Conntrack's table size is the machine's (it is
	// not per namespace), so kube-proxy is told to leave it alone.
	pkc, err := p.writeKubeconfig("kube-proxy", p.tokenFor("kube-proxy"))
	if err != nil {
		return err
	}
	proxyCfg := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %q
mode: iptables
clusterCIDR: %s
hostnameOverride: %s
bindAddress: %s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, pkc, PodBridgeCIDR, RealNodeName, APIServerIP)
	pcfg := filepath.Join(dir, "kube-proxy.yaml")
	if err := os.WriteFile(pcfg, []byte(proxyCfg), 0o644); err != nil {
		return err
	}
	if err := p.run("kube-proxy", p.bin("kube-proxy", p.cfg.K8sVersion), []string{"--config=" + pcfg, "--v=1"}, nil); err != nil {
		return err
	}

	err = p.waitFor(ctx, "node "+RealNodeName+" Ready", 3*time.Minute, func(ctx context.Context) (bool, error) {
		n, err := p.Kube.CoreV1().Nodes().Get(ctx, RealNodeName, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("%w\nkubelet log:\n%s", err, tail(p.path("kubelet.log"), 30))
	}
	p.Timings = append(p.Timings, Timing{"kubelet registered, node Ready", time.Since(t)})
	return nil
}

// RuntimeVersion is the node's containerRuntimeVersion as the kubelet
// reported it.
func (p *Plane) RuntimeVersion(ctx context.Context) (string, error) {
	n, err := p.Kube.CoreV1().Nodes().Get(ctx, RealNodeName, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	return n.Status.NodeInfo.ContainerRuntimeVersion, nil
}

// ImageDigests reads the name@digest lines hack/images wrote beside the
// tar, keyed by repository (ghcr.io/pilotlight/pilotlight, ...).
func ImageDigests(tarPath string) (map[string]string, error) {
	b, err := os.ReadFile(filepath.Join(strings.TrimSuffix(tarPath, ".tar"), "digests.txt"))
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, l := range strings.Fields(string(b)) {
		repo, _, ok := strings.Cut(l, "@")
		if ok {
			out[repo] = l
		}
	}
	return out, nil
}

// AutoscalerServiceName is the Service the activator's stats reach the
// autoscaler through (ws://autoscaler.knative-serving.svc.cluster.local:8080).
const AutoscalerServiceName = "autoscaler"

// startDataPath puts Knative's data path on the real node: queue-proxy (the
// image config-deployment names, in every revision pod), the activator
// (Knative's own Deployment from the serving module's config, on the image
// hack/images built from its module), and the webhook (startWebhook). The autoscaler stays a process of the
// namespace (AutoscalerIP); a Service without a selector gives it the name
// the activator dials. No cluster DNS runs: the activator's pod gets that
// one name in its /etc/hosts (hostAliases).
func (p *Plane) startDataPath(ctx context.Context) error {
	digests, err := ImageDigests(p.cfg.ImagesTar)
	if err != nil {
		return err
	}
	queue, err := p.knativeImage(digests, "queue")
	if err != nil {
		return err
	}
	activator, err := p.knativeImage(digests, "activator")
	if err != nil {
		return err
	}
	patch, _ := json.Marshal(map[string]any{"data": map[string]string{"queue-sidecar-image": queue}})
	if _, err := p.Kube.CoreV1().ConfigMaps(KnativeNamespace).Patch(ctx, "config-deployment", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("config-deployment queue-sidecar-image: %w", err)
	}

	// The autoscaler's name for the activator.
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: AutoscalerServiceName, Namespace: KnativeNamespace, Labels: map[string]string{"app": "autoscaler"}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
			{Name: "http", Port: 8080, TargetPort: intstr.FromInt32(8080)},
			{Name: "http-metrics", Port: 9090, TargetPort: intstr.FromInt32(9090)},
		}},
	}
	created, err := p.Kube.CoreV1().Services(KnativeNamespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("autoscaler Service: %w", err)
	}
	eps := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: AutoscalerServiceName + "-process", Namespace: KnativeNamespace,
			Labels: map[string]string{discoveryv1.LabelServiceName: AutoscalerServiceName, discoveryv1.LabelManagedBy: "cluster-test"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{AutoscalerIP}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("http"), Port: ptr.To[int32](8080)},
			{Name: ptr.To("http-metrics"), Port: ptr.To[int32](9090)},
		},
	}
	if _, err := p.Kube.DiscoveryV1().EndpointSlices(KnativeNamespace).Create(ctx, eps, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("autoscaler EndpointSlice: %w", err)
	}

	core := filepath.Join(p.cfg.ServingDir, "config", "core")
	roles, _ := filepath.Glob(filepath.Join(core, "200-roles", "*.yaml"))
	if err := p.ApplyFiles(ctx, append(roles, filepath.Join(core, "200-serviceaccount.yaml"))...); err != nil {
		return err
	}
	objs, err := knativeDeployment(core, "activator", activator, func(spec map[string]any) {
		spec["hostAliases"] = []any{map[string]any{"ip": created.Spec.ClusterIP,
			"hostnames": []any{AutoscalerServiceName + "." + KnativeNamespace + ".svc.cluster.local"}}}
	})
	if err != nil {
		return err
	}
	t := time.Now()
	if err := p.Apply(ctx, p.Dynamic, objs...); err != nil {
		return err
	}
	err = p.waitFor(ctx, "the activator Deployment available", 3*time.Minute, func(ctx context.Context) (bool, error) {
		d, err := p.Kube.AppsV1().Deployments(KnativeNamespace).Get(ctx, "activator", metav1.GetOptions{})
		return err == nil && d.Status.AvailableReplicas >= 1, nil
	})
	if err != nil {
		return fmt.Errorf("%w\nactivator pods: %s", err, p.podsSummary(ctx, KnativeNamespace))
	}
	p.Timings = append(p.Timings, Timing{"activator pod Ready (Knative's Deployment)", time.Since(t)})
	return p.startWebhook(ctx, digests)
}

// startWebhook runs Knative's webhook as a pod of its own Deployment
// (config/core/deployments/webhook.yaml, image by digest) with its
// defaulting and validating webhook configurations, so every Knative object
// is defaulted and validated by Knative on the API server's path: a Service
// made by hand (kn) gets its defaults there, not from `pilotlight deploy`.
// The API server, a process of the namespace, reaches the webhook's Service
// by its ClusterIP (kube-proxy); the webhook makes its own certificate and
// writes it into the configurations' caBundle, which is awaited.
func (p *Plane) startWebhook(ctx context.Context, digests map[string]string) error {
	image, err := p.knativeImage(digests, "webhook")
	if err != nil {
		return err
	}
	core := filepath.Join(p.cfg.ServingDir, "config", "core")
	objs, err := knativeDeployment(core, "webhook", image, nil)
	if err != nil {
		return err
	}
	hooks, err := filepath.Glob(filepath.Join(core, "webhooks", "*.yaml"))
	if err != nil {
		return err
	}
	for _, f := range hooks {
		o, err := readObjects(f)
		if err != nil {
			return err
		}
		objs = append(objs, o...)
	}
	t := time.Now()
	if err := p.Apply(ctx, p.Dynamic, objs...); err != nil {
		return err
	}
	err = p.waitFor(ctx, "Knative's webhook available, its certificate in the webhook configurations", 3*time.Minute, func(ctx context.Context) (bool, error) {
		d, err := p.Kube.AppsV1().Deployments(KnativeNamespace).Get(ctx, "webhook", metav1.GetOptions{})
		if err != nil || d.Status.AvailableReplicas < 1 {
			return false, nil
		}
		m, err := p.Kube.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "webhook.serving.knative.dev", metav1.GetOptions{})
		if err != nil || len(m.Webhooks) == 0 {
			return false, nil
		}
		for _, w := range m.Webhooks {
			if len(w.ClientConfig.CABundle) == 0 {
				return false, nil
			}
		}
		v, err := p.Kube.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, "validation.webhook.serving.knative.dev", metav1.GetOptions{})
		return err == nil && len(v.Webhooks) > 0 && len(v.Webhooks[0].ClientConfig.CABundle) > 0, nil
	})
	if err != nil {
		return fmt.Errorf("%w\nknative-serving pods: %s", err, p.podsSummary(ctx, KnativeNamespace))
	}
	p.Timings = append(p.Timings, Timing{"webhook pod Ready, its configurations registered", time.Since(t)})
	return nil
}

// knativeImage is the digest hack/images gave Knative's component c.
func (p *Plane) knativeImage(digests map[string]string, c string) (string, error) {
	d := digests["ko.local/knative/"+c]
	if d == "" {
		return "", fmt.Errorf("no image ko.local/knative/%s in %s: hack/images/build.sh builds it from .cache/cluster/bin (CLUSTER_NODE=1 hack/cluster/build.sh)", c, p.cfg.ImagesTar)
	}
	return d, nil
}

// knativeDeployment reads Knative's own manifest for a component
// (config/core/deployments/<name>.yaml: its Deployment and Service) with
// the Deployment's image replaced by image and edit applied to its pod spec.
func knativeDeployment(core, name, image string, edit func(spec map[string]any)) ([]*unstructured.Unstructured, error) {
	objs, err := readObjects(filepath.Join(core, "deployments", name+".yaml"))
	if err != nil {
		return nil, err
	}
	for _, o := range objs {
		if o.GetKind() != "Deployment" {
			continue
		}
		spec := o.Object["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
		spec["containers"].([]any)[0].(map[string]any)["image"] = image
		// The harness ends in seconds, not after Knative's long drains.
		spec["terminationGracePeriodSeconds"] = int64(5)
		if edit != nil {
			edit(spec)
		}
	}
	return objs, nil
}

// podsSummary says each pod's phase and container states, for errors.
func (p *Plane) podsSummary(ctx context.Context, ns string) string {
	pods, err := p.Kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, pod := range pods.Items {
		s := pod.Name + " " + string(pod.Status.Phase)
		for _, cs := range pod.Status.ContainerStatuses {
			switch {
			case cs.State.Waiting != nil:
				s += fmt.Sprintf(" %s:waiting(%s: %s)", cs.Name, cs.State.Waiting.Reason, cs.State.Waiting.Message)
			case cs.State.Terminated != nil:
				s += fmt.Sprintf(" %s:terminated(%s %d)", cs.Name, cs.State.Terminated.Reason, cs.State.Terminated.ExitCode)
			default:
				s += fmt.Sprintf(" %s:running(ready=%v restarts=%d)", cs.Name, cs.Ready, cs.RestartCount)
			}
		}
		out = append(out, s)
	}
	return strings.Join(out, "; ")
}

// runcBinary is the runtime containerd calls: runc, or $CLUSTER_RUNC (a
// wrapper that logs runc's calls, when debugging the node).
func runcBinary() string {
	if r := os.Getenv("CLUSTER_RUNC"); r != "" {
		return r
	}
	return "runc"
}

// ServeHostsFile is the STAND-IN for cluster DNS (CoreDNS is not built
// here): every second it writes each Service's
// <name>.<namespace>.svc.cluster.local and ClusterIP into the namespace's
// /etc/hosts (the file `ip netns exec` mounts over /etc/hosts for the
// harness's processes). Knative's autoscaler, a process of the namespace,
// probes the activator through a revision's Service name before it scales
// the revision to zero. Pods resolve nothing; the data path needs no name
// inside a pod (the activator's one name is a hostAlias).
func (p *Plane) ServeHostsFile(ctx context.Context, path string) {
	base, err := os.ReadFile(path)
	if err != nil {
		p.cfg.Log.Warn("hosts stand-in: read", "path", path, "err", err)
		return
	}
	last := ""
	for {
		svcs, err := p.Kube.CoreV1().Services("").List(ctx, metav1.ListOptions{})
		if err == nil {
			var b strings.Builder
			b.Write(base)
			for _, s := range svcs.Items {
				if ip := s.Spec.ClusterIP; ip != "" && ip != corev1.ClusterIPNone {
					fmt.Fprintf(&b, "%s %s.%s.svc.cluster.local\n", ip, s.Name, s.Namespace)
				}
			}
			if b.String() != last {
				// In place: the file is a bind mount, a rename would not reach it.
				if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
					p.cfg.Log.Warn("hosts stand-in: write", "err", err)
				}
				last = b.String()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}
