package config

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/yaml"
)

const namespace = "pilotlight"

func policies(t *testing.T) map[string]*networkingv1.NetworkPolicy {
	t.Helper()
	out := map[string]*networkingv1.NetworkPolicy{}
	for _, p := range objectsOf[*networkingv1.NetworkPolicy](loadDocuments(t)) {
		out[p.Name] = p
	}
	return out
}

// selects reports whether a policy's podSelector matches a pod's labels.
func selects(t *testing.T, p *networkingv1.NetworkPolicy, podLabels map[string]string) bool {
	t.Helper()
	sel, err := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector)
	if err != nil {
		t.Fatalf("policy %s: %v", p.Name, err)
	}
	return sel.Matches(labels.Set(podLabels))
}

// peerAdmits reports whether a peer admits a pod with podLabels in a
// namespace with nsLabels (the policy's own namespace is policyNS).
func peerAdmits(t *testing.T, peer networkingv1.NetworkPolicyPeer, policyNS string, nsLabels, podLabels map[string]string) bool {
	t.Helper()
	if peer.IPBlock != nil {
		return false
	}
	nsOK := nsLabels["kubernetes.io/metadata.name"] == policyNS
	if peer.NamespaceSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(peer.NamespaceSelector)
		if err != nil {
			t.Fatal(err)
		}
		nsOK = sel.Matches(labels.Set(nsLabels))
	}
	podOK := true
	if peer.PodSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
		if err != nil {
			t.Fatal(err)
		}
		podOK = sel.Matches(labels.Set(podLabels))
	}
	return nsOK && podOK
}

func ns(name string, extra ...string) map[string]string {
	l := map[string]string{"kubernetes.io/metadata.name": name}
	for i := 0; i+1 < len(extra); i += 2 {
		l[extra[i]] = extra[i+1]
	}
	return l
}

// functionPodLabels are the labels a function pod really gets: the generated
// Service's template labels.
func functionPodLabels(t *testing.T) map[string]string {
	t.Helper()
	svcs := objectsOf[*servingv1.Service](loadDocuments(t))
	if len(svcs) == 0 {
		t.Fatal("no Knative Services")
	}
	return svcs[0].Spec.Template.Labels
}

var routerPod = map[string]string{"app.kubernetes.io/part-of": "pilotlight", "app.kubernetes.io/component": "router"}

// admitsIngress reports whether any policy selecting dst lets src in, on
// any port.
func admitsIngress(t *testing.T, ps map[string]*networkingv1.NetworkPolicy, dst, srcNS, srcPod map[string]string) bool {
	t.Helper()
	return admitsIngressOnPort(t, ps, dst, srcNS, srcPod, anyPort)
}

func TestNetworkPolicies(t *testing.T) {
	ps := policies(t)
	deny, ok := ps["default-deny"]
	if !ok || len(deny.Spec.PodSelector.MatchLabels)+len(deny.Spec.PodSelector.MatchExpressions) != 0 ||
		len(deny.Spec.Ingress)+len(deny.Spec.Egress) != 0 || !slices.Contains(deny.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
		t.Fatalf("no default-deny policy for ingress and egress in %s", namespace)
	}
	fn := functionPodLabels(t)
	other := map[string]string{"app": "something-else"}
	tests := []struct {
		name          string
		dst           map[string]string
		srcNS, srcPod map[string]string
		want          bool
	}{
		{"router to function", fn, ns(namespace), routerPod, true},
		{"activator to function", fn, ns("knative-serving"), map[string]string{"app": "activator"}, true},
		{"knative ingress to function", fn, ns("kourier-system"), map[string]string{"app": "3scale-kourier-gateway"}, true},
		{"another pod in the namespace to function", fn, ns(namespace), other, false},
		{"a pod elsewhere to function", fn, ns("default"), other, false},
		{"a function to another function", fn, ns(namespace), fn, false},
		{"gateway to router", routerPod, ns("edge", "pilotlight.dev/gateway", "true"), other, true},
		{"unlabelled namespace to router", routerPod, ns("default"), other, false},
		{"function to router", routerPod, ns(namespace), fn, false},
	}
	for _, tc := range tests {
		if got := admitsIngress(t, ps, tc.dst, tc.srcNS, tc.srcPod); got != tc.want {
			t.Errorf("%s: admitted=%v, want %v", tc.name, got, tc.want)
		}
	}

	// Function pods: egress only to DNS.
	for _, p := range ps {
		if !selects(t, p, fn) || p.Name == "default-deny" {
			continue
		}
		for _, rule := range p.Spec.Egress {
			if len(rule.Ports) == 0 || len(rule.To) == 0 {
				t.Errorf("policy %s lets function pods reach any port or any destination", p.Name)
			}
			for _, port := range rule.Ports {
				if port.Port == nil || port.Port.IntValue() != 53 {
					t.Errorf("policy %s lets function pods send to port %v; only DNS (53) is allowed", p.Name, port.Port)
				}
			}
		}
	}
}

func TestRBACIsNamespacedAndMinimal(t *testing.T) {
	docs := loadDocuments(t)
	for _, d := range docs {
		if strings.HasPrefix(d.kind, "rbac.authorization.k8s.io/") && !strings.HasSuffix(d.kind, "/Role") && !strings.HasSuffix(d.kind, "/RoleBinding") {
			t.Errorf("%s: cluster-wide RBAC is not allowed", d)
		}
	}
	roles := map[string]*rbacv1.Role{}
	for _, r := range objectsOf[*rbacv1.Role](docs) {
		roles[r.Name] = r
		if r.Namespace == "" {
			t.Errorf("role %s has no namespace", r.Name)
		}
		for _, rule := range r.Rules {
			for _, s := range slices.Concat(rule.APIGroups, rule.Resources, rule.Verbs) {
				if s == "*" {
					t.Errorf("role %s uses a wildcard", r.Name)
				}
			}
			if slices.Contains(rule.Resources, "secrets") {
				t.Errorf("role %s reads secrets", r.Name)
			}
		}
	}
	router, ok := roles["pilotlight-router"]
	if !ok {
		t.Fatal("no pilotlight-router Role")
	}
	// Grants are keyed by the object names they are limited to ("*": any):
	// the router may write its flag ConfigMap and its Lease, nothing else.
	granted := map[string]bool{}
	for _, rule := range router.Rules {
		names := rule.ResourceNames
		if len(names) == 0 {
			names = []string{"*"}
		}
		for _, g := range rule.APIGroups {
			for _, res := range rule.Resources {
				for _, v := range rule.Verbs {
					for _, n := range names {
						granted[g+"/"+res+"/"+n+":"+v] = true
					}
				}
			}
		}
	}
	var want []string
	for _, res := range []string{"services", "routes", "revisions"} {
		for _, v := range []string{"get", "list", "watch"} {
			want = append(want, "serving.knative.dev/"+res+"/*:"+v)
		}
	}
	for _, v := range []string{"get", "list", "watch", "update"} {
		want = append(want, "/configmaps/pilotlight-flags:"+v)
	}
	want = append(want, "discovery.k8s.io/endpointslices/*:list") // rollout analysis finds every replica
	// blue-green pre-scale on Knative: min-scale on the revision and its PodAutoscaler
	want = append(want, "serving.knative.dev/revisions/*:patch", "autoscaling.internal.knative.dev/podautoscalers/*:patch")
	want = append(want, "/services/*:get") // --knative-via=service
	want = append(want, "coordination.k8s.io/leases/*:create", "coordination.k8s.io/leases/pilotlight-router:get", "coordination.k8s.io/leases/pilotlight-router:update")
	for _, w := range want {
		if !granted[w] {
			t.Errorf("router lacks %s", w)
		}
		delete(granted, w)
	}
	if len(granted) > 0 {
		t.Errorf("router is granted more than it reads: %v", granted)
	}
	deployer, ok := roles["pilotlight-deployer"]
	if !ok {
		t.Fatal("no pilotlight-deployer Role")
	}
	var canWriteServices bool
	for _, rule := range deployer.Rules {
		if slices.Contains(rule.Resources, "services") && slices.Contains(rule.Verbs, "update") && slices.Contains(rule.Verbs, "create") {
			canWriteServices = true
		}
		if slices.Contains(rule.Resources, "revisions") && slices.ContainsFunc(rule.Verbs, func(v string) bool { return v != "get" && v != "list" && v != "watch" }) {
			t.Errorf("deployer may write revisions: %v (Knative creates them)", rule.Verbs)
		}
	}
	if !canWriteServices {
		t.Error("deployer cannot create and update Knative Services")
	}
	for _, b := range objectsOf[*rbacv1.RoleBinding](docs) {
		if b.RoleRef.Kind != "Role" {
			t.Errorf("rolebinding %s binds a %s", b.Name, b.RoleRef.Kind)
		}
		if _, ok := roles[b.RoleRef.Name]; !ok {
			t.Errorf("rolebinding %s binds missing role %s", b.Name, b.RoleRef.Name)
		}
	}
}

func TestBPFAgentIsConfinedNotPrivileged(t *testing.T) {
	dss := objectsOf[*appsv1.DaemonSet](loadDocuments(t))
	if len(dss) != 1 {
		t.Fatalf("%d DaemonSets, want the eBPF agent", len(dss))
	}
	ds := dss[0]
	pod := ds.Spec.Template.Spec
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("selector %v does not match the pod template's labels", ds.Spec.Selector)
	}
	if !pod.HostPID || pod.HostNetwork || pod.HostIPC {
		t.Errorf("hostPID=%v hostNetwork=%v hostIPC=%v: want only hostPID", pod.HostPID, pod.HostNetwork, pod.HostIPC)
	}
	// Its token reads the function pods' labels and readiness, nothing else.
	if pod.AutomountServiceAccountToken == nil || !*pod.AutomountServiceAccountToken {
		t.Error("the agent mounts no API token: it watches the function pods")
	}
	for _, r := range objectsOf[*rbacv1.Role](loadDocuments(t)) {
		if r.Name != pod.ServiceAccountName {
			continue
		}
		if r.Namespace != "pilotlight" || len(r.Rules) != 1 || !slices.Equal(r.Rules[0].Resources, []string{"pods"}) ||
			!slices.Equal(r.Rules[0].Verbs, []string{"get", "list", "watch"}) {
			t.Errorf("the agent's role %s/%s grants %+v, want get, list, watch on pods in pilotlight", r.Namespace, r.Name, r.Rules)
		}
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Containers))
	}
	c := pod.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged {
		t.Fatal("agent is privileged (or does not say it is not)")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation not false")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("root filesystem writable")
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Error("capabilities not dropped")
	}
	add := slices.Clone(sc.Capabilities.Add)
	slices.Sort(add)
	if !slices.Equal(add, []corev1.Capability{"BPF", "PERFMON"}) {
		t.Errorf("capabilities added %v, want exactly BPF and PERFMON", sc.Capabilities.Add)
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type == corev1.SeccompProfileTypeUnconfined {
		t.Error("no seccomp profile")
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
	}
	hostPaths := map[string]string{}
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	if m, ok := mounts["/sys/kernel/btf"]; !ok || hostPaths[m.Name] != "/sys/kernel/btf" {
		t.Error("/sys/kernel/btf is not mounted from the host")
	}
	if len(hostPaths) != 1 {
		t.Errorf("host paths %v: the agent needs /sys/kernel/btf alone (it pins nothing, its programs need no tracefs)", hostPaths)
	}
	if !mounts["/sys/kernel/btf"].ReadOnly {
		t.Error("/sys/kernel/btf mounted writable")
	}
	for name, path := range hostPaths {
		if path == "/" || path == "/proc" || path == "/var/run/docker.sock" || strings.HasSuffix(path, "containerd.sock") {
			t.Errorf("volume %s mounts host %s", name, path)
		}
	}
	if c.Resources.Limits.Memory().IsZero() || c.Resources.Limits.Cpu().IsZero() {
		t.Error("agent has no resource limits")
	}
}

// falcoItem is one entry of a Falco rules file, strictly decoded.
type falcoItem struct {
	RequiredEngineVersion string   `json:"required_engine_version,omitempty"`
	Rule                  string   `json:"rule,omitempty"`
	Macro                 string   `json:"macro,omitempty"`
	List                  string   `json:"list,omitempty"`
	Desc                  string   `json:"desc,omitempty"`
	Condition             string   `json:"condition,omitempty"`
	Output                string   `json:"output,omitempty"`
	Priority              string   `json:"priority,omitempty"`
	Tags                  []string `json:"tags,omitempty"`
	Items                 []string `json:"items,omitempty"`
	Enabled               *bool    `json:"enabled,omitempty"`
}

var falcoIdent = regexp.MustCompile(`\bpilotlight_[a-z_]+\b`)

func TestFalcoRules(t *testing.T) {
	raw, err := os.ReadFile("security/falco-rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var items []falcoItem
	if err := yaml.UnmarshalStrict(raw, &items); err != nil {
		t.Fatalf("falco-rules.yaml: %v", err)
	}
	defined := map[string]bool{}
	rules := map[string]falcoItem{}
	for i, it := range items {
		kinds := 0
		for _, name := range []string{it.Rule, it.Macro, it.List, it.RequiredEngineVersion} {
			if name != "" {
				kinds++
			}
		}
		if kinds != 1 {
			t.Errorf("item %d: want exactly one of rule, macro, list, required_engine_version", i)
		}
		switch {
		case it.Macro != "":
			defined[it.Macro] = true
			if it.Condition == "" {
				t.Errorf("macro %s has no condition", it.Macro)
			}
		case it.List != "":
			defined[it.List] = true
			if len(it.Items) == 0 {
				t.Errorf("list %s is empty", it.List)
			}
		case it.Rule != "":
			rules[it.Rule] = it
		}
	}
	for _, it := range items {
		if it.Condition == "" {
			continue
		}
		if err := balanced(it.Condition); err != "" {
			t.Errorf("%s%s: condition %s", it.Rule, it.Macro, err)
		}
		for _, ref := range falcoIdent.FindAllString(it.Condition, -1) {
			if !defined[ref] {
				t.Errorf("%s%s refers to undefined %s", it.Rule, it.Macro, ref)
			}
		}
	}
	priorities := []string{"EMERGENCY", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFORMATIONAL", "DEBUG"}
	for name, r := range rules {
		if r.Desc == "" || r.Condition == "" || r.Output == "" || !slices.Contains(priorities, r.Priority) {
			t.Errorf("rule %q: needs desc, condition, output and a valid priority (got %q)", name, r.Priority)
		}
		if !strings.Contains(r.Output, "%container.id") || !strings.Contains(r.Output, "%k8s.pod.name") {
			t.Errorf("rule %q: output does not name the container and pod", name)
		}
		if !strings.Contains(r.Condition, "pilotlight_runtime") {
			t.Errorf("rule %q is not scoped to the runtime container", name)
		}
	}
	// What each required rule must look at.
	want := map[string][]string{
		"shell":    {"pilotlight_spawned_process", "pilotlight_shells"},
		"outbound": {"pilotlight_outbound"},
		"model":    {"pilotlight_open_write", "/functions/"},
		"process":  {"pilotlight_spawned_process", "not proc.name in (pilotlight_runtime_binaries)"},
	}
	for what, needles := range want {
		found := false
		for _, r := range rules {
			ok := true
			for _, n := range needles {
				ok = ok && strings.Contains(r.Condition, n)
			}
			found = found || ok
		}
		if !found {
			t.Errorf("no rule for %s (condition with %v)", what, needles)
		}
	}
	// The runtime container the rules scope to is the one the Services run.
	for _, svc := range objectsOf[*servingv1.Service](loadDocuments(t)) {
		if name := svc.Spec.Template.Spec.Containers[0].Name; name != "runtime" || svc.Namespace != namespace {
			t.Errorf("service %s runs container %q in %s; Falco's pilotlight_runtime macro expects runtime in %s", svc.Name, name, svc.Namespace, namespace)
		}
	}
}

// admitsEgress reports whether the policies selecting src (in namespace)
// let it send to a pod with dstPod labels in a namespace with dstNS labels
// on TCP port.
func admitsEgress(t *testing.T, ps map[string]*networkingv1.NetworkPolicy, src, dstNS, dstPod map[string]string, port int) bool {
	t.Helper()
	for _, p := range ps {
		if !selects(t, p, src) {
			continue
		}
		for _, rule := range p.Spec.Egress {
			portOK := len(rule.Ports) == 0
			for _, rp := range rule.Ports {
				if rp.Port != nil && rp.Port.IntValue() == port && (rp.Protocol == nil || *rp.Protocol == corev1.ProtocolTCP) {
					portOK = true
				}
			}
			if !portOK || len(rule.To) == 0 {
				continue // no peer: any destination, which no rule here means to grant
			}
			for _, peer := range rule.To {
				if peerAdmits(t, peer, p.Namespace, dstNS, dstPod) {
					return true
				}
			}
		}
	}
	return false
}

// TestRouterReachesTheBPFAgents: serve --bpf-agents (router/router.yaml)
// lists the agents' EndpointSlices in pilotlight-system and reads each
// agent's port 9464; RBAC and NetworkPolicy grant that and nothing more.
func TestRouterReachesTheBPFAgents(t *testing.T) {
	docs := loadDocuments(t)
	dss := objectsOf[*appsv1.DaemonSet](docs)
	if len(dss) != 1 {
		t.Fatalf("%d DaemonSets, want the eBPF agent", len(dss))
	}
	agentNS, agentPod := ns(dss[0].Namespace), dss[0].Spec.Template.Labels
	ps := policies(t)
	for _, tc := range []struct {
		name          string
		dstNS, dstPod map[string]string
		port          int
		want          bool
	}{
		{"router to an agent's metrics port", agentNS, agentPod, 9464, true},
		{"router to another port of an agent", agentNS, agentPod, 9090, false},
		{"router to another pod in the agent's namespace", agentNS, map[string]string{"app": "something-else"}, 9464, false},
		{"router to port 9464 elsewhere", ns("default"), agentPod, 9464, false},
	} {
		if got := admitsEgress(t, ps, routerPod, tc.dstNS, tc.dstPod, tc.port); got != tc.want {
			t.Errorf("%s: admitted=%v, want %v", tc.name, got, tc.want)
		}
	}

	var role *rbacv1.Role
	for _, r := range objectsOf[*rbacv1.Role](docs) {
		if r.Namespace == dss[0].Namespace && r.Labels["app.kubernetes.io/component"] == "router" {
			if role != nil {
				t.Fatalf("two router Roles in %s: %s, %s", r.Namespace, role.Name, r.Name)
			}
			role = r
		}
	}
	if role == nil {
		t.Fatalf("no Role lets the router list the agents' EndpointSlices in %s", dss[0].Namespace)
	}
	if len(role.Rules) != 1 || !slices.Equal(role.Rules[0].APIGroups, []string{"discovery.k8s.io"}) ||
		!slices.Equal(role.Rules[0].Resources, []string{"endpointslices"}) || !slices.Equal(role.Rules[0].Verbs, []string{"list"}) {
		t.Errorf("Role %s/%s grants %+v; want exactly list on discovery.k8s.io endpointslices", role.Namespace, role.Name, role.Rules)
	}
	bound := false
	for _, b := range objectsOf[*rbacv1.RoleBinding](docs) {
		if b.Namespace != role.Namespace || b.RoleRef.Name != role.Name {
			continue
		}
		for _, s := range b.Subjects {
			if s.Kind == "ServiceAccount" && s.Namespace == namespace && s.Name == "pilotlight-router" {
				bound = true
			} else {
				t.Errorf("RoleBinding %s also binds %s %s/%s", b.Name, s.Kind, s.Namespace, s.Name)
			}
		}
	}
	if !bound {
		t.Errorf("Role %s/%s is not bound to the router's service account", role.Namespace, role.Name)
	}
}
