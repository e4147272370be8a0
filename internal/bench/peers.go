package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// A peer is a general-purpose reverse proxy (nginx, haproxy: Debian
// packages, hack/deps/bench.apt) put in front of the same instance as the
// router, in the same run: the yardstick for the router's hop.
type peer struct {
	name string // as the table shows it
	addr string // host:port it listens on
	cmd  *exec.Cmd
	dir  string
}

func (p *peer) stop() {
	if p == nil {
		return
	}
	if p.cmd != nil {
		(&Proc{Cmd: p.cmd}).Stop()
	}
	os.RemoveAll(p.dir)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// nginxConf is nginx as the issue measured it: one worker, upstream keepalive 64.
const nginxConf = `worker_processes 1;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    client_max_body_size 1m;
    upstream instance { server %[2]s; keepalive 64; }
    server {
        listen %[3]s;
        location / {
            proxy_pass http://instance;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }
    }
}
`

// nginxGRPCConf is nginx's gRPC proxy as the yardstick for gRPC through
// the router: one worker, HTTP/2 (h2c, prior knowledge) from the client,
// grpc_pass to the instance's h2c port with upstream keepalive 64.
const nginxGRPCConf = `worker_processes 1;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    client_max_body_size 1m;
    upstream instance { server %[2]s; keepalive 64; keepalive_requests 1000000; }
    server {
        listen %[3]s http2;
        keepalive_requests 1000000; # a load generator does not reconnect after the default 1000 (GOAWAY)
        location / {
            grpc_pass grpc://instance;
        }
    }
}
`

// haproxyConf is haproxy as the issue measured it: one thread, http-reuse always.
const haproxyConf = `global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    http-reuse always
    option forwardfor
frontend front
    bind %[2]s
    default_backend instance
backend instance
    server one %[1]s
`

// startPeer writes name's config in a temp dir and starts it in front of
// instance (host:port); missing binaries are reported as such. "nginx-grpc"
// is nginx with grpc_pass (HTTP/2 only: ready once it accepts).
func startPeer(ctx context.Context, name, instance string, logTo io.Writer) (*peer, error) {
	kind := name
	name = strings.TrimSuffix(name, "-grpc")
	bin, err := exec.LookPath(name)
	if err != nil {
		for _, d := range []string{"/usr/sbin", "/sbin"} {
			if _, serr := os.Stat(filepath.Join(d, name)); serr == nil {
				bin, err = filepath.Join(d, name), nil
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%s is not installed (Debian package %s, listed in hack/deps/bench.apt; run hack/install-deps.sh)", name, name)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pilotlight-bench-"+name+"-")
	if err != nil {
		return nil, err
	}
	p := &peer{addr: fmt.Sprintf("127.0.0.1:%d", port), dir: dir}
	conf := filepath.Join(dir, name+".conf")
	var args []string
	switch kind {
	case "nginx-grpc":
		p.name = "nginx grpc_pass (1 worker, upstream keepalive 64)"
		err = os.WriteFile(conf, []byte(fmt.Sprintf(nginxGRPCConf, dir, instance, p.addr)), 0o644)
		args = []string{"-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log")}
	case "nginx":
		p.name = "nginx (1 worker, upstream keepalive 64)"
		err = os.WriteFile(conf, []byte(fmt.Sprintf(nginxConf, dir, instance, p.addr)), 0o644)
		args = []string{"-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log")}
	case "haproxy":
		p.name = "haproxy (1 thread, http-reuse always)"
		err = os.WriteFile(conf, []byte(fmt.Sprintf(haproxyConf, instance, p.addr)), 0o644)
		args = []string{"-f", conf, "-db"}
	default:
		err = fmt.Errorf("unknown peer %s", name)
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if out, verr := exec.Command(bin, append(args, "-t")...).CombinedOutput(); verr != nil && name == "nginx" {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("%s rejected the config the bench wrote: %v\n%s", name, verr, out)
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = logTo, logTo
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ready := func() error { return WaitReady(wctx, "http://"+p.addr+"/v2/health/ready") }
	if kind == "nginx-grpc" {
		ready = func() error { return waitListening(wctx, p.addr) }
	}
	if err := ready(); err != nil {
		p.stop()
		return nil, fmt.Errorf("%s in front of %s: %w", name, instance, err)
	}
	return p, nil
}

// waitListening waits until addr accepts a connection.
func waitListening(ctx context.Context, addr string) error {
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return c.Close()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not listening: %w", addr, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// peerVersion is the installed version line of a peer, for the table.
func peerVersion(name string) string {
	bin := name
	if _, err := exec.LookPath(name); err != nil {
		bin = filepath.Join("/usr/sbin", name)
	}
	flag := "-v"
	out, _ := exec.Command(bin, flag).CombinedOutput()
	line, _, _ := strings.Cut(string(out), "\n")
	switch name {
	case "nginx":
		if _, v, ok := strings.Cut(line, "nginx/"); ok {
			return strings.Fields(v)[0]
		}
	case "haproxy":
		if f := strings.Fields(line); len(f) >= 3 {
			return f[2]
		}
	}
	return "?"
}
