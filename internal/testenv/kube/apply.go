package kubeenv

import (
	"bufio"
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

//go:embed crds/*.yaml
var crdFS embed.FS

// CRDs returns the embedded CRD manifests (Cilium, Istio, Linkerd).
func CRDs() (map[string][]byte, error) {
	out := map[string][]byte{}
	err := fs.WalkDir(crdFS, "crds", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := crdFS.ReadFile(path)
		out[path] = b
		return err
	})
	return out, err
}

// Decode splits a multi-document YAML stream into objects.
func Decode(doc []byte) ([]*unstructured.Unstructured, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(doc)))
	var out []*unstructured.Unstructured
	for {
		chunk, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(chunk)) == 0 {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := utilyaml.Unmarshal(chunk, &u.Object); err != nil {
			return nil, fmt.Errorf("decode manifest: %w", err)
		}
		if len(u.Object) == 0 {
			continue
		}
		out = append(out, u)
	}
}

// Apply server-side-applies every object of a YAML stream as fieldManager,
// waiting for CRDs to be established before returning.
func Apply(ctx context.Context, cfg *rest.Config, fieldManager string, doc []byte) error {
	objs, err := Decode(doc)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))
	var crds []string
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			mapper.Reset()
			if m, err = mapper.RESTMapping(gvk.GroupKind(), gvk.Version); err != nil {
				return fmt.Errorf("map %s: %w", gvk, err)
			}
		}
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == "namespace" {
			ns := o.GetNamespace()
			if ns == "" {
				ns = "default"
			}
			ri = dyn.Resource(m.Resource).Namespace(ns)
		}
		data, err := o.MarshalJSON()
		if err != nil {
			return err
		}
		if _, err := ri.Patch(ctx, o.GetName(), types.ApplyPatchType, data,
			metav1.PatchOptions{FieldManager: fieldManager, Force: ptr(true)}); err != nil {
			return fmt.Errorf("apply %s %s/%s: %w", gvk.Kind, o.GetNamespace(), o.GetName(), err)
		}
		if gvk.Kind == "CustomResourceDefinition" {
			crds = append(crds, o.GetName())
		}
		if gvk.Kind == "Namespace" || gvk.Kind == "CustomResourceDefinition" {
			mapper.Reset()
		}
	}
	return waitEstablished(ctx, dyn, crds)
}

func ptr[T any](v T) *T { return &v }

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

func waitEstablished(ctx context.Context, dyn dynamic.Interface, names []string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, name := range names {
		for {
			u, err := dyn.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("get crd %s: %w", name, err)
			}
			if err == nil && established(u) {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("crd %s not established: %w", name, ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

func established(u *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}

// InstallCRDs applies the embedded Cilium, Istio and Linkerd CRDs.
func (e *Env) InstallCRDs(ctx context.Context) error {
	files, err := CRDs()
	if err != nil {
		return err
	}
	for name, b := range files {
		if err := Apply(ctx, e.AdminConfig(), "quell-test", b); err != nil {
			return fmt.Errorf("install %s: %w", name, err)
		}
	}
	return nil
}

// Main starts one Env for a test package, runs setup (install CRDs, RBAC,
// ...), runs the tests and stops the Env. When the binaries are missing it
// runs the tests with a nil Env (they skip through Require) unless
// QUELL_REQUIRE_INTEGRATION=1, in which case the package fails.
func Main(m *testing.M, opts Options, setup func(ctx context.Context, e *Env) error) int {
	if _, _, err := Binary(); err != nil {
		if os.Getenv(RequireEnv) == "1" {
			fmt.Fprintf(os.Stderr, "kubeenv: %v (%s=1)\n", err, RequireEnv)
			return 1
		}
		fmt.Fprintf(os.Stderr, "kubeenv: %v; integration tests will skip\n", err)
		return m.Run()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	started := time.Now()
	e, err := Start(ctx, opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubeenv: start: %v\n", err)
		return 1
	}
	defer e.Stop()
	if err := e.InstallCRDs(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "kubeenv: %v\n", err)
		return 1
	}
	if setup != nil {
		if err := setup(ctx, e); err != nil {
			fmt.Fprintf(os.Stderr, "kubeenv: setup: %v\n", err)
			return 1
		}
	}
	fmt.Fprintf(os.Stderr, "kubeenv: apiserver %s ready in %s\n", e.Host, time.Since(started).Round(time.Millisecond))
	return m.Run()
}

// Require skips (or, with QUELL_REQUIRE_INTEGRATION=1, fails) a test when
// the package has no Env.
func Require(t testing.TB, e *Env) {
	t.Helper()
	if e != nil {
		return
	}
	_, _, err := Binary()
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("kube-apiserver integration required: %v", err)
	}
	t.Skipf("kube-apiserver integration test skipped: %v", err)
}

// MainAsQuell is Main for packages that act as quell: the apiserver knows
// saToken as quell's ServiceAccount (quell-system/quell), and the RBAC of
// deploy/kubernetes (rbacPath, relative to the test package) is applied.
// *env is set before the tests run.
func MainAsQuell(m *testing.M, saToken, rbacPath string, env **Env) int {
	opts := Options{Users: []User{ServiceAccountUser("quell-system", "quell", saToken)}}
	return Main(m, opts, func(ctx context.Context, e *Env) error {
		rbac, err := os.ReadFile(rbacPath)
		if err != nil {
			return err
		}
		if err := Apply(ctx, e.AdminConfig(), "quell-test", rbac); err != nil {
			return err
		}
		*env = e
		return nil
	})
}
