package playbook

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad feeds arbitrary documents to the loader: it must never panic, and
// a failure is always a LoadErrors naming the file.
func FuzzLoad(f *testing.F) {
	f.Add(bruteForce)
	f.Add(bruteForce + "---\n" + bruteForce)
	f.Add("apiVersion: quell.dev/v1\nkind: Playbook\nmetadata: {name: x}\nspec: {match: 'true', steps: [{action: log, params: {message: *a}}]}\n")
	f.Add("spec: &a {steps: *a}\n")
	f.Add("- [1, 2]\n- {a: b}\n")
	f.Add("apiVersion: quell.dev/v1\nkind: Playbook\nmetadata: {name: x}\nspec:\n  match: 'true'\n  steps: [{action: log, params: {message: '{{ template \"x\" }}'}}]\n")
	reg := testRegistry(f)
	f.Fuzz(func(t *testing.T, doc string) {
		p := filepath.Join(t.TempDir(), "f.yaml")
		if err := os.WriteFile(p, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		set, err := Load(context.Background(), []string{p}, reg)
		if err != nil {
			var les LoadErrors
			if !errors.As(err, &les) || len(les) == 0 || les[0].File != p {
				t.Fatalf("error is not a LoadErrors naming the file: %#v", err)
			}
			return
		}
		ev, ec := bfEvent("203.0.113.9")
		set.Evaluate(context.Background(), ev, ec)
	})
}
