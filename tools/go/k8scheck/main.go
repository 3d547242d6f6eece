// k8scheck decodes Kubernetes manifests strictly into the official API types
// (k8s.io/api, through client-go's scheme): an unknown kind or apiVersion, an
// unknown or misspelt field, a duplicate field or a value of the wrong type is
// an error naming the file, the object and the field. No cluster and no
// network: the types are compiled in (kubeconform would need its JSON schemas
// downloaded). tests/deploy runs it on deploy/k8s/*.yaml.
//
//	k8scheck FILE...      prints one line per object; exit 1 on the first bad file's errors
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
}

func checkFile(path string) (int, []error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, []error{err}
	}
	var errs []error
	n := 0
	r := utilyaml.NewYAMLReader(bufioReader(data))
	for doc := 1; ; doc++ {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return n, append(errs, fmt.Errorf("%s: document %d: %v", path, doc, err))
		}
		if len(bytes.TrimSpace(stripComments(raw))) == 0 {
			continue
		}
		var tm typeMeta
		if err := yaml.Unmarshal(raw, &tm); err != nil {
			errs = append(errs, fmt.Errorf("%s: document %d: %v", path, doc, err))
			continue
		}
		where := fmt.Sprintf("%s: %s %q", path, tm.Kind, tm.Metadata.Name)
		gv, err := schema.ParseGroupVersion(tm.APIVersion)
		if err != nil || tm.Kind == "" {
			errs = append(errs, fmt.Errorf("%s: document %d: apiVersion %q / kind %q: %v", path, doc, tm.APIVersion, tm.Kind, err))
			continue
		}
		obj, err := scheme.Scheme.New(gv.WithKind(tm.Kind))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %v", where, err))
			continue
		}
		if err := yaml.UnmarshalStrict(raw, obj); err != nil {
			errs = append(errs, fmt.Errorf("%s: %v", where, err))
			continue
		}
		if tm.Metadata.Name == "" {
			errs = append(errs, fmt.Errorf("%s: metadata.name is empty", where))
			continue
		}
		n++
		fmt.Printf("%s: ok\n", where)
	}
	return n, errs
}

func stripComments(b []byte) []byte {
	var out bytes.Buffer
	for _, line := range bytes.Split(b, []byte("\n")) {
		t := bytes.TrimSpace(line)
		if len(t) == 0 || t[0] == '#' || string(t) == "---" {
			continue
		}
		out.Write(line)
		out.WriteByte('\n')
	}
	return out.Bytes()
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: k8scheck FILE...")
		os.Exit(2)
	}
	bad := false
	total := 0
	for _, f := range os.Args[1:] {
		n, errs := checkFile(f)
		total += n
		for _, e := range errs {
			fmt.Fprintln(os.Stderr, e)
			bad = true
		}
	}
	fmt.Printf("k8scheck: %d objects\n", total)
	if bad {
		os.Exit(1)
	}
}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }
