// Package cluster runs a live Kubernetes control plane with Knative Serving
// for `make cluster-test`: etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler (k8s.io/kubernetes, the real ones), Knative serving's
// controller and autoscaler (the real ones), and two stand-ins:
//
//   - kwok plays the kubelet: it owns one fake node and marks the pods bound
//     to it Running and Ready. No container runs.
//   - MarkIngressesReady plays Knative's networking layer (net-kourier and
//     its Envoy): it marks each KIngress Ready with a load balancer address,
//     as net-kourier does once its gateways are programmed. No traffic flows.
//
// Everything runs inside the network namespace hack/cluster/run.sh made,
// whose lo carries the private /24 PodNet: the API server and the
// autoscaler (whose POD_IP Endpoints must not be loopback) bind there, and
// kwok hands out pod IPs from it, so every address is local to the namespace.
package cluster

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Addresses inside the test's network namespace (all on its lo).
const (
	PodNet        = "10.244.0.0/24"
	APIServerIP   = "10.244.0.1"
	AutoscalerIP  = "10.244.0.2"
	PodCIDR       = "10.244.0.128/25" // kwok's pod IPs
	ServiceCIDR   = "10.96.0.0/16"
	APIServerPort = 6443
	NodeName      = "kwok-node-0"
)

// Config says where the binaries and Knative's and kwok's files are.
type Config struct {
	Bin        string // .cache/cluster/bin: kube-apiserver-<ver>, ...
	K8sVersion string // v1.34.2
	KwokVer    string
	KnativeVer string
	// Module directories (go list -m -f {{.Dir}}).
	ServingDir, NetworkingDir, CachingDir, KwokDir string
	Dir                                            string // scratch: certs, tokens, data, logs
	// RealNode starts containerd, the kubelet and kube-proxy (node.go)
	// instead of kwok: pods run as containers.
	RealNode bool
	// CgroupRoot is the cgroup (v1, in every hierarchy) the real node's
	// pods live under; hack/cluster/run.sh makes and removes it.
	CgroupRoot string
	// ImagesTar is the OCI layout tar `make images` wrote; the real node's
	// containerd imports it.
	ImagesTar string
	// HostsFile is /etc/netns/<namespace>/hosts, which `ip netns exec`
	// mounts over /etc/hosts: the real node's cluster-DNS stand-in writes
	// Services' names there (ServeHostsFile).
	HostsFile string
	Log       *slog.Logger
}

// Plane is a running control plane.
type Plane struct {
	cfg        Config
	Host       string
	CA         []byte
	adminToken string
	Admin      *rest.Config
	Kube       kubernetes.Interface
	Dynamic    dynamic.Interface

	mu    sync.Mutex
	procs []*proc
	// Timings of the start, for the report.
	Timings []Timing
}

// Timing is one measured phase.
type Timing struct {
	Phase string
	Took  time.Duration
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

// Start brings the control plane up and returns once Knative's controllers
// run. Stop ends every process it started.
func Start(ctx context.Context, cfg Config) (_ *Plane, err error) {
	if _, _, err := net.ParseCIDR(PodNet); err != nil {
		return nil, err
	}
	if !localAddress(APIServerIP) {
		return nil, fmt.Errorf("%s is not an address of this network namespace: run through hack/cluster/run.sh (make cluster-test), which makes the namespace and puts %s on its lo", APIServerIP, PodNet)
	}
	p := &Plane{cfg: cfg, Host: fmt.Sprintf("https://%s:%d", APIServerIP, APIServerPort)}
	defer func() {
		if err != nil {
			p.Stop()
		}
	}()
	phase := func(name string, start time.Time) {
		p.Timings = append(p.Timings, Timing{name, time.Since(start)})
		cfg.Log.Info("cluster: "+name, "took", time.Since(start).Round(time.Millisecond))
	}

	t0 := time.Now()
	if err := p.writeCredentials(); err != nil {
		return nil, err
	}
	if err := p.startEtcd(ctx); err != nil {
		return nil, err
	}
	phase("etcd ready", t0)
	t := time.Now()
	if err := p.startAPIServer(ctx); err != nil {
		return nil, err
	}
	phase("kube-apiserver ready", t)
	t = time.Now()
	for _, c := range []struct{ name, user string }{
		{"kube-controller-manager", "kcm"}, {"kube-scheduler", "scheduler"},
	} {
		kc, err := p.writeKubeconfig(c.user, p.tokenFor(c.user))
		if err != nil {
			return nil, err
		}
		args := []string{"--kubeconfig=" + kc, "--leader-elect=false", "--bind-address=127.0.0.1"}
		if c.name == "kube-controller-manager" {
			args = append(args, "--service-account-private-key-file="+p.path("sa.key"), "--root-ca-file="+p.path("ca.crt"),
				"--use-service-account-credentials=false", "--secure-port=10257", "--controllers=*")
		} else {
			args = append(args, "--secure-port=10259")
		}
		if err := p.run(c.name, p.bin(c.name, cfg.K8sVersion), args, nil); err != nil {
			return nil, err
		}
	}
	// The namespaces and the service-account machinery the rest needs.
	if err := p.waitFor(ctx, "the default service account in namespace default", 2*time.Minute, func(ctx context.Context) (bool, error) {
		_, err := p.Kube.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		return nil, err
	}
	phase("controller manager and scheduler running", t)

	t = time.Now()
	if cfg.RealNode {
		if err := p.startNode(ctx); err != nil {
			return nil, err
		}
		if cfg.HostsFile != "" {
			go p.ServeHostsFile(ctx, cfg.HostsFile)
		}
		phase("real node Ready (containerd, kubelet, kube-proxy)", t)
	} else {
		if err := p.startKwok(ctx); err != nil {
			return nil, err
		}
		phase("kwok node Ready", t)
	}

	t = time.Now()
	if err := p.installKnative(ctx); err != nil {
		return nil, err
	}
	go MarkIngressesReady(ctx, p.Dynamic, cfg.Log)
	phase("knative CRDs, config and controllers", t)
	if cfg.RealNode {
		t = time.Now()
		if err := p.startDataPath(ctx); err != nil {
			return nil, err
		}
		phase("knative data path (activator pod, queue-proxy image)", t)
	}
	return p, nil
}

func (p *Plane) path(name string) string { return filepath.Join(p.cfg.Dir, name) }

func (p *Plane) bin(name, version string) string {
	return filepath.Join(p.cfg.Bin, name+"-"+version)
}

// tokenFor is the static token of a control-plane identity (tokens.csv).
func (p *Plane) tokenFor(user string) string { return "cluster-test-" + user + "-" + p.adminToken[:16] }

// writeCredentials makes a CA, the API server's certificate, the
// service-account signing key and the static tokens of the control-plane
// components. Every other identity in the tests is a real service account.
func (p *Plane) writeCredentials() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pilotlight-cluster-test-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP(APIServerIP), net.ParseIP("10.96.0.1"), net.ParseIP("127.0.0.1")},
		DNSNames:    []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"ca.crt":        pemBlock("CERTIFICATE", caDER),
		"apiserver.crt": pemBlock("CERTIFICATE", srvDER),
	}
	for name, key := range map[string]*ecdsa.PrivateKey{"apiserver.key": srvKey, "sa.key": saKey} {
		der, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return err
		}
		files[name] = pemBlock("EC PRIVATE KEY", der)
	}
	pub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return err
	}
	files["sa.pub"] = pemBlock("PUBLIC KEY", pub)
	p.CA = files["ca.crt"]

	tok := make([]byte, 24)
	if _, err := rand.Read(tok); err != nil {
		return err
	}
	p.adminToken = fmt.Sprintf("%x", tok)
	// Control-plane identities. The controller manager and scheduler get
	// their bootstrap roles' users; the stand-ins and Knative's components
	// are cluster admins (system:masters) here: what the tests examine is
	// Pilotlight's accounts, which are real service accounts under RBAC.
	var csv strings.Builder
	fmt.Fprintf(&csv, "%s,cluster-admin,uid-admin,\"system:masters\"\n", p.adminToken)
	for _, u := range []string{"kcm", "scheduler", "kwok", "knative"} {
		fmt.Fprintf(&csv, "%s,cluster-test:%s,uid-%s,\"system:masters\"\n", p.tokenFor(u), u, u)
	}
	// The real node's kubelet and kube-proxy under their own identities:
	// the Node authorizer holds the kubelet to its node's objects, and the
	// bootstrap binding system:node-proxier names system:kube-proxy.
	fmt.Fprintf(&csv, "%s,system:node:%s,uid-node,\"system:nodes\"\n", p.tokenFor("node"), RealNodeName)
	fmt.Fprintf(&csv, "%s,system:kube-proxy,uid-kube-proxy\n", p.tokenFor("kube-proxy"))
	files["tokens.csv"] = []byte(csv.String())
	for name, b := range files {
		if err := os.WriteFile(p.path(name), b, 0o600); err != nil {
			return err
		}
	}
	p.Admin = &rest.Config{Host: p.Host, BearerToken: p.adminToken, TLSClientConfig: rest.TLSClientConfig{CAData: p.CA}, QPS: 100, Burst: 200}
	var err2 error
	if p.Kube, err2 = kubernetes.NewForConfig(p.Admin); err2 != nil {
		return err2
	}
	p.Dynamic, err2 = dynamic.NewForConfig(p.Admin)
	return err2
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// writeKubeconfig writes a kubeconfig for a bearer token and returns its path.
func (p *Plane) writeKubeconfig(name, token string) (string, error) {
	return WriteKubeconfig(p.path(name+".kubeconfig"), p.Host, p.CA, token)
}

// WriteKubeconfig writes a one-context kubeconfig.
func WriteKubeconfig(path, host string, ca []byte, token string) (string, error) {
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: cluster-test
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: user
  user:
    token: %s
contexts:
- name: cluster-test
  context: {cluster: cluster-test, user: user}
current-context: cluster-test
`, host, b64(ca), token)
	return path, os.WriteFile(path, []byte(cfg), 0o600)
}

// ServiceAccountKubeconfig asks the API server for a token of a service
// account (TokenRequest, as a pod's projected token) and writes a kubeconfig
// that authenticates as it.
func (p *Plane) ServiceAccountKubeconfig(ctx context.Context, ns, name string) (string, string, error) {
	exp := int64(3600)
	tr, err := p.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name,
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		return "", "", fmt.Errorf("token for service account %s/%s: %w", ns, name, err)
	}
	path, err := WriteKubeconfig(p.path(ns+"-"+name+".kubeconfig"), p.Host, p.CA, tr.Status.Token)
	return path, tr.Status.Token, err
}

func (p *Plane) startEtcd(ctx context.Context) error {
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		return fmt.Errorf("etcd not found: install Debian's etcd-server (hack/deps/cluster.apt; hack/install-deps.sh): %w", err)
	}
	args := []string{"--data-dir=" + p.path("etcd"), "--listen-client-urls=http://127.0.0.1:2379",
		"--advertise-client-urls=http://127.0.0.1:2379", "--listen-peer-urls=http://127.0.0.1:2380",
		"--initial-advertise-peer-urls=http://127.0.0.1:2380", "--initial-cluster=default=http://127.0.0.1:2380",
		"--log-level=warn"}
	if err := p.run("etcd", etcd, args, nil); err != nil {
		return err
	}
	return p.waitFor(ctx, "etcd /health", time.Minute, func(ctx context.Context) (bool, error) {
		resp, err := http.Get("http://127.0.0.1:2379/health")
		if err != nil {
			return false, nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == 200 && bytes.Contains(b, []byte(`"true"`)), nil
	})
}

func (p *Plane) startAPIServer(ctx context.Context) error {
	args := []string{
		"--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=" + APIServerIP, "--advertise-address=" + APIServerIP, fmt.Sprintf("--secure-port=%d", APIServerPort),
		"--tls-cert-file=" + p.path("apiserver.crt"), "--tls-private-key-file=" + p.path("apiserver.key"),
		"--client-ca-file=" + p.path("ca.crt"),
		"--token-auth-file=" + p.path("tokens.csv"),
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.path("sa.pub"),
		"--service-account-signing-key-file=" + p.path("sa.key"),
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--cert-dir=" + p.path("apiserver-certs"),
		"--profiling=false",
	}
	if err := p.run("kube-apiserver", p.bin("kube-apiserver", p.cfg.K8sVersion), args, nil); err != nil {
		return err
	}
	return p.waitFor(ctx, "kube-apiserver /readyz", 3*time.Minute, func(ctx context.Context) (bool, error) {
		body, err := p.Kube.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil && string(body) == "ok", nil
	})
}

// startKwok registers the fake node and starts kwok to play its kubelet
// with the stage files kwok's module ships (node heartbeat, pods Ready).
func (p *Plane) startKwok(ctx context.Context) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        NodeName,
			Annotations: map[string]string{"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
			Labels: map[string]string{"type": "kwok", "kubernetes.io/hostname": NodeName, "kubernetes.io/os": "linux",
				"kubernetes.io/arch": "amd64", "kubernetes.io/role": "agent"},
		},
		Spec: corev1.NodeSpec{PodCIDR: PodCIDR, PodCIDRs: []string{PodCIDR}},
		Status: corev1.NodeStatus{
			Allocatable: corev1.ResourceList{"cpu": mustQty("32"), "memory": mustQty("64Gi"), "pods": mustQty("110")},
			Capacity:    corev1.ResourceList{"cpu": mustQty("32"), "memory": mustQty("64Gi"), "pods": mustQty("110")},
			NodeInfo:    corev1.NodeSystemInfo{KubeletVersion: "kwok-" + p.cfg.KwokVer, OperatingSystem: "linux", Architecture: "amd64"},
		},
	}
	if _, err := p.Kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create node %s: %w", NodeName, err)
	}
	kc, err := p.writeKubeconfig("kwok", p.tokenFor("kwok"))
	if err != nil {
		return err
	}
	stage := filepath.Join(p.cfg.KwokDir, "kustomize", "stage")
	args := []string{"--kubeconfig=" + kc, "--manage-all-nodes=true", "--cidr=" + PodCIDR, "--node-ip=" + APIServerIP,
		"--server-address=127.0.0.1:10247", "--node-lease-duration-seconds=40"}
	for _, f := range []string{"node/fast/node-initialize.yaml", "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
		"pod/fast/pod-ready.yaml", "pod/fast/pod-complete.yaml", "pod/fast/pod-delete.yaml"} {
		args = append(args, "--config="+filepath.Join(stage, f))
	}
	if err := p.run("kwok", p.bin("kwok", p.cfg.KwokVer), args, []string{"HOME=" + p.cfg.Dir}); err != nil {
		return err
	}
	// The API server taints a node not-ready when it is created; kwok makes
	// it Ready, and the taint goes once the node says so.
	return p.waitFor(ctx, "node "+NodeName+" Ready and untainted", 2*time.Minute, func(ctx context.Context) (bool, error) {
		n, err := p.Kube.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		ready := false
		for _, c := range n.Status.Conditions {
			ready = ready || (c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue)
		}
		if !ready {
			return false, nil
		}
		var keep []corev1.Taint
		for _, t := range n.Spec.Taints {
			if t.Key != "node.kubernetes.io/not-ready" {
				keep = append(keep, t)
			}
		}
		if len(keep) == len(n.Spec.Taints) {
			return true, nil
		}
		n.Spec.Taints = keep
		_, err = p.Kube.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
		return false, nil
	})
}

// run starts a process of the plane; its output goes to <dir>/<name>.log.
func (p *Plane) run(name, bin string, args, env []string) error {
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("%s: %w (build it with hack/cluster/build.sh)", name, err)
	}
	logPath := p.path(name + ".log")
	f, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	pr := &proc{name: name, cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(pr.done)
	}()
	p.mu.Lock()
	p.procs = append(p.procs, pr)
	p.mu.Unlock()
	p.cfg.Log.Info("cluster: started "+name, "pid", cmd.Process.Pid, "log", logPath)
	return nil
}

// Exited names the plane's processes that have stopped, with their logs'
// last lines (a test failing on a dead component says which).
func (p *Plane) Exited() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, pr := range p.procs {
		select {
		case <-pr.done:
			out = append(out, fmt.Sprintf("%s exited (%v); last log lines:\n%s", pr.name, pr.cmd.ProcessState, tail(pr.log, 15)))
		default:
		}
	}
	return out
}

// Stop ends the plane's processes, newest first.
func (p *Plane) Stop() {
	p.mu.Lock()
	procs := p.procs
	p.procs = nil
	p.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		pr := procs[i]
		_ = pr.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-pr.done:
		case <-time.After(10 * time.Second):
			_ = pr.cmd.Process.Kill()
			<-pr.done
		}
	}
}

// waitFor polls cond until it holds; on timeout the error names what was
// awaited and any process of the plane that died.
func (p *Plane) waitFor(ctx context.Context, what string, timeout time.Duration, cond func(context.Context) (bool, error)) error {
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if dead := p.Exited(); len(dead) > 0 {
			return false, errors.New(strings.Join(dead, "\n"))
		}
		return cond(ctx)
	})
	if err != nil {
		return fmt.Errorf("waiting for %s: %w", what, err)
	}
	return nil
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func localAddress(ip string) bool {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// IgnoreNotFound is apierrors' helper under a shorter name.
func IgnoreNotFound(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// IgnoreAlreadyExists is apierrors' helper for creates that may repeat.
func IgnoreAlreadyExists(err error) error {
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}
