package kube

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/quell-ir/quell/internal/action"
)

// captureLogs is kube.capture_logs: save a pod's spec, events and logs as
// evidence. A log that cannot be fetched (no kubelet, container gone) is
// recorded as an error in the manifest, never silently skipped.
type captureLogs struct {
	c         *Client
	ns, pod   string
	container string
	tail      int
	key       string
}

// Manifest is the evidence index written last, so its presence means the
// capture is complete; hashes let a reviewer check nothing changed.
type Manifest struct {
	Key        string            `json:"key"`
	Namespace  string            `json:"namespace"`
	Pod        string            `json:"pod"`
	UID        string            `json:"uid"`
	IncidentID string            `json:"incident_id,omitempty"`
	CapturedAt time.Time         `json:"captured_at"`
	Files      map[string]string `json:"files"` // name -> sha256
	Errors     map[string]string `json:"errors,omitempty"`
}

func newCapture(c *Client, v action.Values) (action.Action, error) {
	ns, pod := v.String("namespace"), v.String("pod")
	return &captureLogs{c: c, ns: ns, pod: pod, container: v.String("container"), tail: v.Int("tail_lines"),
		key: "kube.capture_logs/" + ns + "/" + pod + "/" + v.String("container")}, nil
}

func (a *captureLogs) Key() string { return a.key }
func (a *captureLogs) Targets() []action.Target {
	return []action.Target{{Kind: "pod", Value: a.ns + "/" + a.pod}}
}

// Dir is where the evidence of this capture goes.
func (a *captureLogs) Dir(eff action.Effect) string {
	inc := labelValue(eff.IncidentID)
	if inc == "" {
		inc = "no-incident"
	}
	return filepath.Join(a.c.cfg.EvidenceDir, inc, a.ns+"_"+a.pod+"_"+hashKey(a.key, 8))
}

func (a *captureLogs) Check(ctx context.Context) (action.Before, error) {
	err := a.c.phase(ctx, "kube.capture_logs", "check", a.key, func(ctx context.Context) error {
		_, err := a.c.getPod(ctx, a.ns, a.pod)
		return err
	})
	return action.Before(`{}`), err
}

func (a *captureLogs) Apply(ctx context.Context, eff action.Effect) error {
	return a.c.phase(ctx, "kube.capture_logs", "apply", a.key, func(ctx context.Context) error {
		dir := a.Dir(eff)
		if _, err := os.Stat(filepath.Join(dir, "manifest.json")); err == nil {
			return nil // captured already
		}
		p, err := a.c.cs.CoreV1().Pods(a.ns).Get(ctx, a.pod, metav1.GetOptions{})
		if err != nil {
			return classify("get pod "+a.ns+"/"+a.pod, err)
		}
		tmp, err := os.MkdirTemp(filepath.Dir(dir), ".capture-")
		if err != nil {
			if err := os.MkdirAll(filepath.Dir(dir), 0o750); err != nil {
				return fmt.Errorf("evidence dir: %w", err)
			}
			if tmp, err = os.MkdirTemp(filepath.Dir(dir), ".capture-"); err != nil {
				return fmt.Errorf("evidence dir: %w", err)
			}
		}
		defer os.RemoveAll(tmp)
		m := Manifest{Key: a.key, Namespace: a.ns, Pod: a.pod, UID: string(p.UID), IncidentID: eff.IncidentID,
			CapturedAt: time.Now().UTC(), Files: map[string]string{}, Errors: map[string]string{}}
		write := func(name string, data []byte) error {
			sum := sha256.Sum256(data)
			m.Files[name] = hex.EncodeToString(sum[:])
			return os.WriteFile(filepath.Join(tmp, name), data, 0o640)
		}
		p.ManagedFields = nil
		pj, _ := json.MarshalIndent(p, "", "  ")
		if err := write("pod.json", pj); err != nil {
			return err
		}
		evs, err := a.c.cs.CoreV1().Events(a.ns).List(ctx, metav1.ListOptions{
			FieldSelector: "involvedObject.name=" + a.pod + ",involvedObject.uid=" + string(p.UID)})
		if err != nil {
			m.Errors["events"] = classify("list events", err).Error()
		} else {
			ej, _ := json.MarshalIndent(evs.Items, "", "  ")
			if err := write("events.json", ej); err != nil {
				return err
			}
		}
		for _, c := range a.containers(p) {
			data, err := a.logs(ctx, c)
			if err != nil {
				// Honest record: without a kubelet (or once the container is
				// gone) the API server cannot serve logs.
				m.Errors["logs/"+c] = err.Error()
				continue
			}
			if err := write("logs-"+c+".txt", data); err != nil {
				return err
			}
		}
		mj, _ := json.MarshalIndent(m, "", "  ")
		if err := os.WriteFile(filepath.Join(tmp, "manifest.json"), mj, 0o640); err != nil {
			return err
		}
		if err := os.Rename(tmp, dir); err != nil {
			if _, serr := os.Stat(filepath.Join(dir, "manifest.json")); serr == nil {
				return nil // a concurrent capture won
			}
			return fmt.Errorf("store evidence: %w", err)
		}
		return nil
	})
}

func (a *captureLogs) containers(p *corev1.Pod) []string {
	if a.container != "" {
		return []string{a.container}
	}
	var out []string
	for _, c := range p.Spec.InitContainers {
		out = append(out, c.Name)
	}
	for _, c := range p.Spec.Containers {
		out = append(out, c.Name)
	}
	sort.Strings(out)
	return out
}

func (a *captureLogs) logs(ctx context.Context, container string) ([]byte, error) {
	opts := &corev1.PodLogOptions{Container: container, Timestamps: true}
	if a.tail > 0 {
		opts.TailLines = ptr(int64(a.tail))
	}
	rc, err := a.c.cs.CoreV1().Pods(a.ns).GetLogs(a.pod, opts).Stream(ctx)
	if err != nil {
		return nil, fmt.Errorf("fetch logs of %s/%s[%s]: %w", a.ns, a.pod, container, err)
	}
	defer rc.Close()
	return io.ReadAll(io.LimitReader(rc, 64<<20))
}

// Verify re-hashes the stored files against the manifest.
func (a *captureLogs) Verify(ctx context.Context, eff action.Effect) error {
	return a.c.phase(ctx, "kube.capture_logs", "verify", a.key, func(ctx context.Context) error {
		dir := a.Dir(eff)
		b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
		if err != nil {
			return fmt.Errorf("verify evidence: %w", err)
		}
		var m Manifest
		if err := json.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("verify evidence manifest: %w", err)
		}
		for name, want := range m.Files {
			data, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				return fmt.Errorf("verify evidence: %w", err)
			}
			sum := sha256.Sum256(data)
			if hex.EncodeToString(sum[:]) != want {
				return fmt.Errorf("verify evidence: %s does not match its hash", name)
			}
		}
		return nil
	})
}

// Revert keeps the evidence: removing it would destroy what an
// investigation needs, and capturing changed nothing in the cluster.
func (a *captureLogs) Revert(context.Context, action.Before) error { return nil }
