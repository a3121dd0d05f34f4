package etcd

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// FuzzDecode feeds arbitrary values to the codec, fully and metadata only:
// it must return an object or a *DecodeError, never panic. The seed corpus
// is in testdata/fuzz/FuzzDecode (regenerate it with
// BREAKGLASS_WRITE_CORPUS=1 go test -run TestWriteFuzzCorpus ./etcd/).
//
//	go test -run '^$' -fuzz FuzzDecode -fuzztime 60s ./etcd/
func FuzzDecode(f *testing.F) {
	c := NewCodec()
	f.Fuzz(func(t *testing.T, value []byte) {
		for _, metaOnly := range []bool{false, true} {
			d, err := c.decode("/registry/pods/ns/p", value, 1, metaOnly)
			if err != nil {
				if _, ok := err.(*DecodeError); !ok {
					t.Fatalf("error of type %T: %v", err, err)
				}
				continue
			}
			if d == nil || d.Object == nil {
				t.Fatal("nil object without error")
			}
			_ = d.Meta().GetName()
			// Whatever decoded must encode again without panicking.
			if !d.Partial {
				c.Encode(d.Object, d.GVK, d.Encoding)
			}
		}
	})
}

func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("BREAKGLASS_WRITE_CORPUS") == "" {
		t.Skip("set BREAKGLASS_WRITE_CORPUS=1 to regenerate testdata/fuzz/FuzzDecode")
	}
	c := NewCodec()
	pod := testPod("ns", "p", "node-1", map[string]string{"app": "x"})
	seeds := map[string][]byte{
		"pod-protobuf":        mustEncode(t, c, pod, podGVK, EncodingProtobuf),
		"pod-json":            mustEncode(t, c, pod, podGVK, EncodingJSON),
		"deployment-cbor":     mustEncode(t, c, testDeployment("ns", "d", 3), deployGVK, EncodingCBOR),
		"deployment-protobuf": mustEncode(t, c, testDeployment("ns", "d", 3), deployGVK, EncodingProtobuf),
		"custom-json":         []byte(`{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"w"},"spec":{"a":[1,2,{"b":null}]}}`),
		"encrypted":           []byte("k8s:enc:aescbc:v1:key1:\x00\x01\x02\x03"),
		"truncated-protobuf":  mustEncode(t, c, pod, podGVK, EncodingProtobuf)[:60],
		"prefix-only":         []byte("k8s\x00"),
		"cbor-prefix-only":    {0xd9, 0xd9, 0xf7},
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range seeds {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", v)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
