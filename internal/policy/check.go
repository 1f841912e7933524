package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/loader"
	"github.com/open-policy-agent/opa/v1/rego"
	"go.yaml.in/yaml/v3"
)

// CheckQuery collects the preparation-check violations: every `deny` rule of
// every package under quell.check.
const CheckQuery = "v := data.quell.check[pkg].deny[_]"

// Document is one input document of a preparation check.
type Document struct {
	File    string `json:"file"`
	Index   int    `json:"index"` // position in a multi-document YAML file or a List
	Kind    string `json:"kind"`  // terraform_plan, kubernetes or json
	Content any    `json:"content"`
}

// Violation is one failed check.
type Violation struct {
	File     string `json:"file"`
	Package  string `json:"package"`
	Resource string `json:"resource,omitempty"`
	Message  string `json:"msg"`
}

// Check evaluates the `deny` rules of the packages quell.check.* found in
// policyDir over the input files (JSON, or YAML with several documents;
// directories are walked for .json, .yaml and .yml) and prints each
// violation as "FILE: [PACKAGE] MESSAGE" to w. It is `quell check --policy
// DIR INPUT...`, which exits non-zero when violations > 0 or err != nil.
// The rules see all documents at once (input.documents), so a check can
// relate them (a workload and the NetworkPolicy that selects it).
func Check(ctx context.Context, policyDir string, inputs []string, w io.Writer) (violations int, err error) {
	vs, err := CheckViolations(ctx, policyDir, inputs)
	if err != nil {
		return 0, err
	}
	for _, v := range vs {
		res := ""
		if v.Resource != "" {
			res = " (" + v.Resource + ")"
		}
		fmt.Fprintf(w, "%s: [%s] %s%s\n", v.File, v.Package, v.Message, res)
	}
	if len(vs) == 0 {
		fmt.Fprintf(w, "no violations in %d input file(s)\n", len(inputs))
	} else {
		fmt.Fprintf(w, "%d violation(s)\n", len(vs))
	}
	return len(vs), nil
}

// CheckViolations is Check without the printing, sorted by file and message.
func CheckViolations(ctx context.Context, policyDir string, inputs []string) ([]Violation, error) {
	if len(inputs) == 0 {
		return nil, errors.New("check: no input files")
	}
	docs, err := LoadDocuments(inputs)
	if err != nil {
		return nil, err
	}
	loaded, err := loader.NewFileLoader().WithRegoVersion(ast.RegoV1).Filtered([]string{policyDir}, func(p string, info fs.FileInfo, depth int) bool {
		return skipTestdata(p, info, depth) || (!info.IsDir() && strings.HasSuffix(info.Name(), "_test.rego"))
	})
	if err != nil {
		return nil, fmt.Errorf("check: load policy %s: %w", policyDir, err)
	}
	store, err := loaded.Store()
	if err != nil {
		return nil, fmt.Errorf("check: policy data: %w", err)
	}
	opts := []func(*rego.Rego){rego.Query(CheckQuery), rego.Store(store), rego.SetRegoVersion(ast.RegoV1)}
	hasCheck := false
	for _, m := range loaded.ParsedModules() {
		opts = append(opts, rego.ParsedModule(m))
		if strings.HasPrefix(m.Package.Path.String(), "data.quell.check.") {
			hasCheck = true
		}
	}
	if !hasCheck {
		return nil, fmt.Errorf("check: no package quell.check.* under %s", policyDir)
	}
	opts = append(opts, rego.Input(map[string]any{"documents": docs}))
	rs, err := rego.New(opts...).Eval(ctx)
	if err != nil {
		return nil, fmt.Errorf("check: evaluate: %w", err)
	}
	var out []Violation
	for _, r := range rs {
		pkg, _ := r.Bindings["pkg"].(string)
		v := Violation{Package: "quell.check." + pkg}
		switch x := r.Bindings["v"].(type) {
		case string:
			v.File, v.Message = "(input set)", x
		case map[string]any:
			v.File, _ = x["file"].(string)
			v.Resource, _ = x["resource"].(string)
			v.Message, _ = x["msg"].(string)
			if v.Message == "" {
				b, _ := json.Marshal(x)
				v.Message = string(b)
			}
			if v.File == "" {
				v.File = "(input set)"
			}
		default:
			b, _ := json.Marshal(x)
			v.File, v.Message = "(input set)", string(b)
		}
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b Violation) int {
		if c := strings.Compare(a.File, b.File); c != 0 {
			return c
		}
		return strings.Compare(a.Message, b.Message)
	})
	return out, nil
}

// LoadDocuments reads the check inputs: JSON files, YAML files with any
// number of documents, and directories holding them. Kubernetes List
// objects are expanded into their items.
func LoadDocuments(inputs []string) ([]Document, error) {
	var files []string
	for _, in := range inputs {
		st, err := os.Stat(in)
		if err != nil {
			return nil, fmt.Errorf("check: %w", err)
		}
		if !st.IsDir() {
			files = append(files, in)
			continue
		}
		err = filepath.WalkDir(in, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			switch strings.ToLower(filepath.Ext(p)) {
			case ".json", ".yaml", ".yml":
				if !d.IsDir() {
					files = append(files, p)
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("check: walk %s: %w", in, err)
		}
	}
	docs := []Document{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("check: %w", err)
		}
		contents, err := decodeDocuments(f, b)
		if err != nil {
			return nil, fmt.Errorf("check: %s: %w", f, err)
		}
		i := 0
		for _, c := range contents {
			for _, item := range expandList(c) {
				docs = append(docs, Document{File: f, Index: i, Kind: documentKind(item), Content: item})
				i++
			}
		}
	}
	return docs, nil
}

func decodeDocuments(name string, b []byte) ([]any, error) {
	if strings.EqualFold(filepath.Ext(name), ".json") {
		var v any
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("parse JSON: %w", err)
		}
		return []any{v}, nil
	}
	var out []any
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for n := 0; ; n++ {
		var v any
		err := dec.Decode(&v)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("parse YAML document %d: %w", n, err)
		}
		if v == nil {
			continue // an empty document between two "---"
		}
		// Round-trip through JSON: the policy sees the same types whatever
		// the file format (and YAML's non-string map keys are refused).
		j, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("YAML document %d: %w", n, err)
		}
		var c any
		d := json.NewDecoder(bytes.NewReader(j))
		d.UseNumber()
		if err := d.Decode(&c); err != nil {
			return nil, fmt.Errorf("YAML document %d: %w", n, err)
		}
		out = append(out, c)
	}
}

func expandList(v any) []any {
	m, ok := v.(map[string]any)
	if !ok {
		return []any{v}
	}
	if k, _ := m["kind"].(string); k == "List" || strings.HasSuffix(k, "List") && m["items"] != nil {
		if items, ok := m["items"].([]any); ok {
			return items
		}
	}
	return []any{v}
}

func documentKind(v any) string {
	m, ok := v.(map[string]any)
	if !ok {
		return "json"
	}
	if _, ok := m["format_version"]; ok {
		if _, ok := m["planned_values"]; ok {
			return "terraform_plan"
		}
		if _, ok := m["resource_changes"]; ok {
			return "terraform_plan"
		}
	}
	if a, _ := m["apiVersion"].(string); a != "" {
		if k, _ := m["kind"].(string); k != "" {
			return "kubernetes"
		}
	}
	return "json"
}
