// Package kubeenv runs a real kube-apiserver backed by a real etcd on
// loopback, for integration tests of everything quell does to Kubernetes.
// There is no kubelet, scheduler or controller-manager: objects are stored
// and validated (schemas, admission, RBAC), not enforced, so tests check
// objects and their specs.
//
// One Env is started per test package from TestMain (see Main) because a
// start costs ~10-25 s; tests share it and use their own namespaces.
package kubeenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/rest"
)

// Version is the Kubernetes version the harness builds and runs.
const Version = "v1.37.2"

// DefaultBinary is where scripts/test-deps/kube.sh caches the apiserver.
const DefaultBinary = "/var/cache/quell/bin/kube-apiserver-" + Version

// RequireEnv, when "1", turns a missing binary into a failure instead of a skip.
const RequireEnv = "QUELL_REQUIRE_INTEGRATION"

// User is a static token identity known to the apiserver (token auth file).
type User struct {
	Token  string
	Name   string
	UID    string
	Groups []string
}

// ServiceAccountUser is the identity the apiserver gives a service account's
// tokens; RBAC bindings to the ServiceAccount subject apply to it.
func ServiceAccountUser(namespace, name, token string) User {
	return User{
		Token: token,
		Name:  "system:serviceaccount:" + namespace + ":" + name,
		UID:   "sa-" + namespace + "-" + name,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace,
			"system:authenticated"},
	}
}

// Options tune the apiserver.
type Options struct {
	// MaxRequestsInflight and MaxMutatingRequestsInflight, when positive,
	// set the apiserver's in-flight limits; with DisableAPF the plain
	// max-in-flight filter answers 429 + Retry-After beyond them.
	MaxRequestsInflight         int
	MaxMutatingRequestsInflight int
	DisableAPF                  bool
	// Users are extra token identities (the admin is always there).
	Users []User
	// Log receives the processes' output; nil discards it.
	Log *os.File
}

// Env is a running etcd + kube-apiserver.
type Env struct {
	Host       string // https://127.0.0.1:PORT
	CAData     []byte
	AdminToken string
	dir        string
	etcd       *exec.Cmd
	apiserver  *exec.Cmd
	etcdDone   chan struct{}
	apiDone    chan struct{}
}

// Binary returns the kube-apiserver path (QUELL_KUBE_APISERVER overrides
// the default) and whether it exists, plus the etcd path.
func Binary() (apiserver, etcd string, err error) {
	apiserver = os.Getenv("QUELL_KUBE_APISERVER")
	if apiserver == "" {
		apiserver = DefaultBinary
	}
	if _, err := os.Stat(apiserver); err != nil {
		return "", "", fmt.Errorf("kube-apiserver not found at %s (run scripts/test-deps/kube.sh)", apiserver)
	}
	etcd, err = exec.LookPath("etcd")
	if err != nil {
		return "", "", fmt.Errorf("etcd not found in PATH (run scripts/test-deps/kube.sh): %w", err)
	}
	return apiserver, etcd, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Start launches etcd and the apiserver in a temporary directory and waits
// until the apiserver is ready (RBAC bootstrap done).
func Start(ctx context.Context, opts Options) (*Env, error) {
	apiBin, etcdBin, err := Binary()
	if err != nil {
		return nil, err
	}
	// etcd on tmpfs when available: fsync on a disk dominates write latency.
	base := ""
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		base = "/dev/shm"
	}
	dir, err := os.MkdirTemp(base, "quell-kubeenv-")
	if err != nil {
		return nil, fmt.Errorf("kubeenv temp dir: %w", err)
	}
	e := &Env{dir: dir, AdminToken: randHex(16)}
	ok := false
	defer func() {
		if !ok {
			e.Stop()
		}
	}()
	out := opts.Log
	if out == nil {
		out, _ = os.Open(os.DevNull)
	}

	etcdPort, err := freePort()
	if err != nil {
		return nil, err
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, err
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	e.etcd = exec.Command(etcdBin,
		"--name=quell", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=quell="+peerURL, "--log-level=error",
		"--quota-backend-bytes=4294967296")
	e.etcd.Stdout, e.etcd.Stderr = out, out
	e.etcd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := e.etcd.Start(); err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	e.etcdDone = make(chan struct{})
	go func() { _ = e.etcd.Wait(); close(e.etcdDone) }()

	// Service-account signing key: the apiserver refuses to start without one.
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	keyFile, pubFile := filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(pubFile, pubPEM, 0o600); err != nil {
		return nil, err
	}
	var tokens bytes.Buffer
	users := append([]User{{Token: e.AdminToken, Name: "quell-test-admin", UID: "admin", Groups: []string{"system:masters"}}}, opts.Users...)
	for _, u := range users {
		fmt.Fprintf(&tokens, "%s,%s,%s,\"%s\"\n", u.Token, u.Name, u.UID, strings.Join(u.Groups, ","))
	}
	tokenFile := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokenFile, tokens.Bytes(), 0o600); err != nil {
		return nil, err
	}

	port, err := freePort()
	if err != nil {
		return nil, err
	}
	certDir := filepath.Join(dir, "certs")
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--secure-port=" + strconv.Itoa(port),
		"--bind-address=127.0.0.1",
		"--cert-dir=" + certDir,
		"--token-auth-file=" + tokenFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + pubFile,
		"--service-account-signing-key-file=" + keyFile,
		"--service-cluster-ip-range=10.0.0.0/24",
		"--disable-admission-plugins=ServiceAccount",
		"--v=0",
	}
	if opts.MaxRequestsInflight > 0 {
		args = append(args, "--max-requests-inflight="+strconv.Itoa(opts.MaxRequestsInflight))
	}
	if opts.MaxMutatingRequestsInflight > 0 {
		args = append(args, "--max-mutating-requests-inflight="+strconv.Itoa(opts.MaxMutatingRequestsInflight))
	}
	if opts.DisableAPF {
		args = append(args, "--enable-priority-and-fairness=false")
	}
	e.apiserver = exec.Command(apiBin, args...)
	e.apiserver.Stdout, e.apiserver.Stderr = out, out
	e.apiserver.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := e.apiserver.Start(); err != nil {
		return nil, fmt.Errorf("start kube-apiserver: %w", err)
	}
	e.apiDone = make(chan struct{})
	go func() { _ = e.apiserver.Wait(); close(e.apiDone) }()
	e.Host = "https://127.0.0.1:" + strconv.Itoa(port)

	if err := e.waitReady(ctx, filepath.Join(certDir, "apiserver.crt")); err != nil {
		return nil, err
	}
	ok = true
	return e, nil
}

func (e *Env) waitReady(ctx context.Context, certFile string) error {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	// The serving certificate is self-signed and written at start; until it
	// exists nothing can be verified, so only then is the CA known.
	client := &http.Client{Timeout: 2 * time.Second}
	var lastErr error
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready: %v (last: %v)", ctx.Err(), lastErr)
		case <-e.apiDone:
			return errors.New("kube-apiserver exited during start")
		case <-e.etcdDone:
			return errors.New("etcd exited during start")
		case <-tick.C:
		}
		if e.CAData == nil {
			b, err := os.ReadFile(certFile)
			if err != nil {
				lastErr = err
				continue
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(b) {
				lastErr = errors.New("serving certificate not yet complete")
				continue
			}
			e.CAData = b
			client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.Host+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+e.AdminToken)
		resp, err := client.Do(req)
		if err != nil {
			lastErr = err
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		lastErr = fmt.Errorf("readyz: %s", resp.Status)
	}
}

// Config returns a client config authenticating with token.
func (e *Env) Config(token string) *rest.Config {
	return &rest.Config{
		Host:            e.Host,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: e.CAData},
		QPS:             -1, // tests and harness code are not rate limited unless they ask
	}
}

// AdminConfig returns a system:masters client config.
func (e *Env) AdminConfig() *rest.Config { return e.Config(e.AdminToken) }

// Stop kills the apiserver and etcd and removes the temporary directory.
func (e *Env) Stop() {
	stop := func(c *exec.Cmd, done chan struct{}) {
		if c == nil || c.Process == nil {
			return
		}
		_ = c.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = c.Process.Kill()
			<-done
		}
	}
	stop(e.apiserver, e.apiDone)
	stop(e.etcd, e.etcdDone)
	if e.dir != "" {
		_ = os.RemoveAll(e.dir)
	}
}
