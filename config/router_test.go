package config

import (
	"net"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// routerManifests is what router/router.yaml must hold: one of each.
type routerManifests struct {
	deploy  *appsv1.Deployment
	svc     *corev1.Service
	pdb     *policyv1.PodDisruptionBudget
	monitor *serviceMonitor
}

func loadRouter(t *testing.T) routerManifests {
	t.Helper()
	docs := loadDocuments(t)
	one := func(kind string, n int) {
		if n != 1 {
			t.Fatalf("want exactly one router %s below config/, have %d", kind, n)
		}
	}
	ds, ss, ps := objectsOf[*appsv1.Deployment](docs), objectsOf[*corev1.Service](docs), objectsOf[*policyv1.PodDisruptionBudget](docs)
	// The eBPF agent's headless Service (security/bpf-agent.yaml) is not the router's.
	ss = slices.DeleteFunc(ss, func(s *corev1.Service) bool { return s.Labels["app.kubernetes.io/component"] == "bpf-agent" })
	one("Deployment", len(ds))
	one("Service", len(ss))
	one("PodDisruptionBudget", len(ps))
	var mon *serviceMonitor
	for _, sm := range objectsOf[*serviceMonitor](docs) {
		if sm.Spec.Selector.MatchLabels["app.kubernetes.io/component"] == "router" {
			mon = sm
		}
	}
	if mon == nil {
		t.Fatal("no ServiceMonitor selects the router")
	}
	return routerManifests{ds[0], ss[0], ps[0], mon}
}

// routerArgs parses the router container's --name=value arguments.
func routerArgs(t *testing.T, c corev1.Container) (string, map[string]string) {
	t.Helper()
	if len(c.Args) == 0 {
		t.Fatal("router container has no args")
	}
	out := map[string]string{}
	for _, a := range c.Args[1:] {
		k, v, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !ok || !strings.HasPrefix(a, "--") {
			t.Fatalf("router arg %q: write flags as --name=value", a)
		}
		out[k] = v
	}
	return c.Args[0], out
}

func containerPort(t *testing.T, c corev1.Container, name string) int32 {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	t.Fatalf("router container has no port named %q", name)
	return 0
}

// mountedFrom returns the volume a file path in the container is read from,
// and whether the mount is a subPath one (which the kubelet never updates).
func mountedFrom(t *testing.T, spec corev1.PodSpec, c corev1.Container, file string) (corev1.Volume, bool) {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if path.Dir(file) == m.MountPath || file == m.MountPath {
			for _, v := range spec.Volumes {
				if v.Name == m.Name {
					return v, m.SubPath != ""
				}
			}
		}
	}
	t.Fatalf("%s is not on any volume of the router pod", file)
	return corev1.Volume{}, false
}

func TestRouterDeployment(t *testing.T) {
	r := loadRouter(t)
	d := r.deploy
	spec := d.Spec.Template.Spec
	if d.Namespace != namespace || d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("router Deployment: want 2 replicas in %s, have %v in %s", namespace, d.Spec.Replicas, d.Namespace)
	}
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Fatalf("router Deployment's selector does not match its pods (%v)", err)
	}
	for k, v := range routerPod {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("router pods lack %s=%s, which the NetworkPolicies and RBAC comments name", k, v)
		}
	}
	sas := map[string]bool{}
	for _, sa := range objectsOf[*corev1.ServiceAccount](loadDocuments(t)) {
		sas[sa.Namespace+"/"+sa.Name] = true
	}
	if !sas[namespace+"/"+spec.ServiceAccountName] {
		t.Errorf("router runs as %q, which security/rbac.yaml does not define", spec.ServiceAccountName)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("router pod: want one container, have %d", len(spec.Containers))
	}
	c := spec.Containers[0]
	cmd, args := routerArgs(t, c)
	if cmd != "serve" || args["backend"] != "knative" || args["namespace"] != namespace {
		t.Errorf("router runs %q %v; want serve --backend=knative --namespace=%s", cmd, args, namespace)
	}
	if _, dev := args["dev"]; dev {
		t.Error("router runs with --dev (authentication off)")
	}

	// API keys from a Secret, the flag file from a ConfigMap mounted as a
	// directory so the kubelet's ..data swap reaches the watcher.
	if v, _ := mountedFrom(t, spec, c, args["keys-file"]); v.Secret == nil {
		t.Errorf("--keys-file %s is not on a Secret volume", args["keys-file"])
	}
	v, subPath := mountedFrom(t, spec, c, args["flags"])
	if v.ConfigMap == nil || subPath {
		t.Errorf("--flags %s: want a ConfigMap volume mounted as a directory (subPath mounts are never updated), have %+v subPath=%v", args["flags"], v.VolumeSource, subPath)
	}

	// Listeners: each flag's port is the container port of that name.
	for flag, name := range map[string]string{"addr": "http", "admin-addr": "admin"} {
		host, port, err := net.SplitHostPort(args[flag])
		if err != nil {
			t.Fatalf("--%s=%q: %v", flag, args[flag], err)
		}
		if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
			t.Errorf("--%s=%s binds loopback: nothing outside the pod can reach it", flag, args[flag])
		}
		if p, _ := strconv.Atoi(port); int32(p) != containerPort(t, c, name) {
			t.Errorf("--%s port %s is not container port %q (%d)", flag, port, name, containerPort(t, c, name))
		}
	}
	// The console's cold starts: --bpf-agents names the agents' Service
	// (security/bpf-agent.yaml), whose pods are the DaemonSet's and whose
	// port is the 9464 the router reads.
	agentNS, agentSvc, _ := strings.Cut(args["bpf-agents"], "/")
	var agentService *corev1.Service
	for _, s := range objectsOf[*corev1.Service](loadDocuments(t)) {
		if s.Namespace == agentNS && s.Name == agentSvc {
			agentService = s
		}
	}
	dss := objectsOf[*appsv1.DaemonSet](loadDocuments(t))
	switch {
	case agentService == nil:
		t.Errorf("--bpf-agents=%q names no Service in config/", args["bpf-agents"])
	case len(dss) != 1 || dss[0].Namespace != agentNS || !labels.SelectorFromSet(agentService.Spec.Selector).Matches(labels.Set(dss[0].Spec.Template.Labels)):
		t.Errorf("--bpf-agents=%q: its Service does not select the eBPF agent's DaemonSet pods", args["bpf-agents"])
	case !slices.ContainsFunc(agentService.Spec.Ports, func(p corev1.ServicePort) bool { return p.Port == 9464 }):
		t.Errorf("--bpf-agents=%q: its Service has no port 9464, which the router reads", args["bpf-agents"])
	}
	for _, probe := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe} {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != "/healthz" {
			t.Errorf("router probes: want HTTP GET /healthz, have %+v", probe)
		}
	}
}

// TestRouterMeetsRestrictedPodSecurity checks the fields the "restricted"
// Pod Security Standard (v1.34) looks at. The live control plane
// (make cluster-test) runs the real admission plugin on these pods.
func TestRouterMeetsRestrictedPodSecurity(t *testing.T) {
	spec := loadRouter(t).deploy.Spec.Template.Spec
	psc := spec.SecurityContext
	if psc == nil {
		t.Fatal("router pod has no securityContext")
	}
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
		t.Error("router pod shares a host namespace")
	}
	allowedVolumes := func(v corev1.Volume) bool {
		return v.ConfigMap != nil || v.Secret != nil || v.EmptyDir != nil || v.Projected != nil || v.DownwardAPI != nil ||
			v.CSI != nil || v.PersistentVolumeClaim != nil || v.Ephemeral != nil
	}
	for _, v := range spec.Volumes {
		if !allowedVolumes(v) {
			t.Errorf("volume %s: type not allowed by the restricted standard", v.Name)
		}
	}
	for _, c := range append(spec.InitContainers, spec.Containers...) {
		sc := c.SecurityContext
		if sc == nil {
			t.Fatalf("container %s has no securityContext", c.Name)
		}
		nonRoot := (sc.RunAsNonRoot != nil && *sc.RunAsNonRoot) || (sc.RunAsNonRoot == nil && psc.RunAsNonRoot != nil && *psc.RunAsNonRoot)
		uid := psc.RunAsUser
		if sc.RunAsUser != nil {
			uid = sc.RunAsUser
		}
		seccomp := psc.SeccompProfile
		if sc.SeccompProfile != nil {
			seccomp = sc.SeccompProfile
		}
		switch {
		case !nonRoot:
			t.Errorf("container %s: runAsNonRoot not true", c.Name)
		case uid != nil && *uid == 0:
			t.Errorf("container %s: runs as uid 0", c.Name)
		case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
			t.Errorf("container %s: allowPrivilegeEscalation not false", c.Name)
		case sc.Privileged != nil && *sc.Privileged:
			t.Errorf("container %s: privileged", c.Name)
		case sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL"):
			t.Errorf("container %s: capabilities do not drop ALL", c.Name)
		case seccomp == nil || (seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault && seccomp.Type != corev1.SeccompProfileTypeLocalhost):
			t.Errorf("container %s: seccomp profile not RuntimeDefault or Localhost", c.Name)
		}
		if sc.Capabilities != nil {
			for _, add := range sc.Capabilities.Add {
				if add != "NET_BIND_SERVICE" {
					t.Errorf("container %s adds capability %s", c.Name, add)
				}
			}
		}
		for _, p := range c.Ports {
			if p.HostPort != 0 {
				t.Errorf("container %s: hostPort %d", c.Name, p.HostPort)
			}
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("container %s: root filesystem writable", c.Name)
		}
	}
}

// servicePortTarget resolves a Service port name to the container port it
// reaches.
func servicePortTarget(t *testing.T, svc *corev1.Service, c corev1.Container, name string) int32 {
	t.Helper()
	for _, p := range svc.Spec.Ports {
		if p.Name != name {
			continue
		}
		if p.TargetPort.Type == intstr.String {
			return containerPort(t, c, p.TargetPort.StrVal)
		}
		if p.TargetPort.IntVal != 0 {
			return p.TargetPort.IntVal
		}
		return p.Port
	}
	t.Fatalf("Service %s has no port named %q", svc.Name, name)
	return 0
}

// TestMetricsScrapeReachesTheAdminListener: the ServiceMonitor, the
// router's Service, its Deployment and serve's listener layout agree. Outside
// --dev, /metrics is served without credentials only on --admin-addr; the
// scrape must land there, and NetworkPolicy must let Prometheus (and only
// it) reach that port.
func TestMetricsScrapeReachesTheAdminListener(t *testing.T) {
	r := loadRouter(t)
	c := r.deploy.Spec.Template.Spec.Containers[0]
	_, args := routerArgs(t, c)
	_, adminPort, _ := net.SplitHostPort(args["admin-addr"])

	if !labels.SelectorFromSet(r.svc.Spec.Selector).Matches(labels.Set(r.deploy.Spec.Template.Labels)) {
		t.Fatal("router Service does not select the router pods")
	}
	msel, err := metav1.LabelSelectorAsSelector(&r.monitor.Spec.Selector)
	if err != nil || !msel.Matches(labels.Set(r.svc.Labels)) {
		t.Fatalf("ServiceMonitor %s does not select Service %s (%v)", r.monitor.Name, r.svc.Name, err)
	}
	if !slices.Contains(r.monitor.Spec.NamespaceSelector.MatchNames, r.svc.Namespace) {
		t.Errorf("ServiceMonitor looks in %v, the router is in %s", r.monitor.Spec.NamespaceSelector.MatchNames, r.svc.Namespace)
	}
	for _, e := range r.monitor.Spec.Endpoints {
		got := servicePortTarget(t, r.svc, c, e.Port)
		if strconv.Itoa(int(got)) != adminPort || e.Path != "/metrics" {
			t.Errorf("ServiceMonitor scrapes %s on port %q (container port %d); /metrics without credentials is on --admin-addr %s",
				e.Path, e.Port, got, args["admin-addr"])
		}
	}

	ps := policies(t)
	pod := r.deploy.Spec.Template.Labels
	prometheus := map[string]string{"app.kubernetes.io/name": "prometheus"}
	admin, _ := strconv.Atoi(adminPort)
	http := int(containerPort(t, c, "http"))
	tests := []struct {
		name          string
		srcNS, srcPod map[string]string
		port          int
		want          bool
	}{
		{"prometheus to admin", ns("monitoring"), prometheus, admin, true},
		{"another monitoring pod to admin", ns("monitoring"), map[string]string{"app": "grafana"}, admin, false},
		{"gateway to admin", ns("edge", "pilotlight.dev/gateway", "true"), map[string]string{}, admin, false},
		{"gateway to http", ns("edge", "pilotlight.dev/gateway", "true"), map[string]string{}, http, true},
		{"a function to admin", ns(namespace), functionPodLabels(t), admin, false},
		{"a pod elsewhere to http", ns("default"), map[string]string{}, http, false},
	}
	for _, tc := range tests {
		if got := admitsIngressOnPort(t, ps, pod, tc.srcNS, tc.srcPod, tc.port); got != tc.want {
			t.Errorf("%s (port %d): admitted=%v, want %v", tc.name, tc.port, got, tc.want)
		}
	}
}

// anyPort asks admitsIngressOnPort to ignore the rules' ports.
const anyPort = 0

// admitsIngressOnPort reports whether any policy selecting dst lets src in
// on port (a rule's ports applied unless port is anyPort).
func admitsIngressOnPort(t *testing.T, ps map[string]*networkingv1.NetworkPolicy, dst, srcNS, srcPod map[string]string, port int) bool {
	t.Helper()
	for _, p := range ps {
		if !selects(t, p, dst) {
			continue
		}
		for _, rule := range p.Spec.Ingress {
			portOK := port == anyPort || len(rule.Ports) == 0
			for _, rp := range rule.Ports {
				portOK = portOK || rp.Port == nil || rp.Port.IntValue() == port
			}
			if !portOK {
				continue
			}
			if len(rule.From) == 0 {
				return true
			}
			for _, peer := range rule.From {
				if peerAdmits(t, peer, p.Namespace, srcNS, srcPod) {
					return true
				}
			}
		}
	}
	return false
}

func TestRouterDisruptionBudget(t *testing.T) {
	r := loadRouter(t)
	sel, err := metav1.LabelSelectorAsSelector(r.pdb.Spec.Selector)
	if err != nil || !sel.Matches(labels.Set(r.deploy.Spec.Template.Labels)) {
		t.Fatalf("PodDisruptionBudget does not select the router pods (%v)", err)
	}
	if r.pdb.Spec.MinAvailable == nil || r.pdb.Spec.MinAvailable.IntValue() < 1 ||
		r.pdb.Spec.MinAvailable.IntValue() >= int(*r.deploy.Spec.Replicas) {
		t.Errorf("PodDisruptionBudget minAvailable %v: want at least 1 and fewer than the %d replicas (or no drain could proceed)",
			r.pdb.Spec.MinAvailable, *r.deploy.Spec.Replicas)
	}
}
