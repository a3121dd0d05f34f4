package etcd

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer/cbor"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
)

// Encoding is how a value is stored in etcd.
type Encoding string

// The encodings the API server writes.
const (
	// EncodingProtobuf is "k8s\x00" followed by a runtime.Unknown: the
	// default for built-in resources.
	EncodingProtobuf Encoding = "protobuf"
	// EncodingJSON is used for custom resources, by aggregated API servers and
	// with --storage-media-type=application/json.
	EncodingJSON Encoding = "json"
	// EncodingCBOR is self-described CBOR (tag 55799), written when the
	// CBOR serving and storage feature gates are on.
	EncodingCBOR Encoding = "cbor"
	// EncodingEncrypted is "k8s:enc:<provider>:<version>:<key>:..." written
	// when encryption at rest covers the resource.
	EncodingEncrypted Encoding = "encrypted"
	// EncodingUnknown is anything else.
	EncodingUnknown Encoding = "unknown"
)

var (
	protobufPrefix  = []byte{'k', '8', 's', 0}
	cborPrefix      = []byte{0xd9, 0xd9, 0xf7}
	encryptedPrefix = []byte("k8s:enc:")
)

// DetectEncoding tells how a value is encoded from its first bytes.
func DetectEncoding(value []byte) Encoding {
	switch {
	case bytes.HasPrefix(value, protobufPrefix):
		return EncodingProtobuf
	case bytes.HasPrefix(value, encryptedPrefix):
		return EncodingEncrypted
	case bytes.HasPrefix(value, cborPrefix):
		return EncodingCBOR
	}
	if t := bytes.TrimLeft(value, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		return EncodingJSON
	}
	return EncodingUnknown
}

// DecodeError says why one value could not be decoded. A listing reports it
// for that key and goes on.
type DecodeError struct {
	Key      string
	Encoding Encoding
	// Provider is the encryption provider, e.g. "aescbc:v1:key1", for
	// encrypted values.
	Provider string
	Err      error
}

func (e *DecodeError) Error() string {
	if e.Encoding == EncodingEncrypted {
		return fmt.Sprintf("%s: encrypted at rest (%s): breakglass cannot decrypt it", e.Key, e.Provider)
	}
	return fmt.Sprintf("%s: cannot decode %s value: %v", e.Key, e.Encoding, e.Err)
}

func (e *DecodeError) Unwrap() error { return e.Err }

// encryptionProvider returns "aescbc:v1:key1" from "k8s:enc:aescbc:v1:key1:...".
// KMS v2 values are protobuf after the provider name, so stop at the third
// field.
func encryptionProvider(value []byte) string {
	rest := value[len(encryptedPrefix):]
	if len(rest) > 200 {
		rest = rest[:200]
	}
	parts := strings.SplitN(string(rest), ":", 4)
	if len(parts) > 3 {
		parts = parts[:3]
	}
	for i, p := range parts {
		parts[i] = strings.Map(func(r rune) rune {
			if r < 0x20 || r > 0x7e {
				return -1
			}
			return r
		}, p)
	}
	return strings.Join(parts, ":")
}

// Codec decodes and encodes values the way the API server does, with the
// apimachinery serializers and the built-in API types.
type Codec struct {
	scheme *runtime.Scheme
	proto  *protobuf.Serializer
	json   *kjson.Serializer
	cbor   runtime.Serializer
}

// NewCodec returns a codec for the built-in API types (builtinScheme). Types it
// does not know (custom resources, CRDs themselves) decode as unstructured
// (JSON, CBOR) or metadata only (protobuf).
func NewCodec() *Codec {
	s := builtinScheme()
	return &Codec{
		scheme: s,
		proto:  protobuf.NewSerializer(s, s),
		json:   kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, s, s, kjson.SerializerOptions{}),
		cbor:   cbor.NewSerializer(s, s),
	}
}

// Decoded is one value decoded.
type Decoded struct {
	Encoding Encoding
	GVK      schema.GroupVersionKind
	// Object is a typed object from the scheme, an *unstructured.Unstructured
	// (JSON or CBOR of a type the scheme does not know) or, when only the
	// metadata was decoded, a *metav1.PartialObjectMetadata.
	Object runtime.Object
	// Partial is true when Object holds only the metadata.
	Partial bool
}

// Meta returns the object's metadata accessor.
func (d *Decoded) Meta() metav1.Object {
	m, err := meta.Accessor(d.Object)
	if err != nil {
		return &metav1.ObjectMeta{}
	}
	return m
}

// Decode decodes a value fully. key is used in errors; modRevision becomes
// the object's resourceVersion, as the API server reports it. It never
// panics: a corrupt value is a *DecodeError.
func (c *Codec) Decode(key string, value []byte, modRevision int64) (d *Decoded, err error) {
	return c.decode(key, value, modRevision, false)
}

// DecodeMetadata decodes only what a label selector, a name or an age needs:
// apiVersion, kind and metadata. For protobuf values it skips the spec and
// status entirely, which is several times faster than Decode.
func (c *Codec) DecodeMetadata(key string, value []byte, modRevision int64) (*Decoded, error) {
	return c.decode(key, value, modRevision, true)
}

func (c *Codec) decode(key string, value []byte, modRevision int64, metaOnly bool) (d *Decoded, err error) {
	enc := DetectEncoding(value)
	defer func() {
		// The generated unmarshalers are not written for hostile input; a
		// corrupt value must not take a whole listing down.
		if r := recover(); r != nil {
			d, err = nil, &DecodeError{Key: key, Encoding: enc, Err: fmt.Errorf("corrupt value: %v", r)}
		}
	}()
	switch enc {
	case EncodingEncrypted:
		return nil, &DecodeError{Key: key, Encoding: enc, Provider: encryptionProvider(value)}
	case EncodingUnknown:
		return nil, &DecodeError{Key: key, Encoding: enc, Err: errors.New("not protobuf (k8s\\x00), JSON, CBOR or an encrypted (k8s:enc) value")}
	case EncodingProtobuf:
		d, err = c.decodeProtobuf(value, metaOnly)
	case EncodingJSON:
		d, err = c.decodeWith(c.json, value)
	case EncodingCBOR:
		d, err = c.decodeWith(c.cbor, value)
	}
	if err != nil {
		return nil, &DecodeError{Key: key, Encoding: enc, Err: err}
	}
	d.Encoding = enc
	d.Object.GetObjectKind().SetGroupVersionKind(d.GVK)
	m, err := meta.Accessor(d.Object)
	if err != nil {
		return nil, &DecodeError{Key: key, Encoding: enc, Err: fmt.Errorf("%s has no metadata: %w", d.GVK.Kind, err)}
	}
	m.SetResourceVersion(strconv.FormatInt(modRevision, 10))
	return d, nil
}

func (c *Codec) decodeProtobuf(value []byte, metaOnly bool) (*Decoded, error) {
	var unk runtime.Unknown
	if _, _, err := c.proto.Decode(value, nil, &unk); err != nil {
		return nil, err
	}
	gvk := unk.GroupVersionKind()
	if gvk.Kind == "" || gvk.Version == "" {
		return nil, fmt.Errorf("no apiVersion or kind in the protobuf envelope")
	}
	if metaOnly || !c.scheme.Recognizes(gvk) {
		// Every Kubernetes protobuf message has its ObjectMeta as field 1,
		// which is all PartialObjectMetadata holds; its generated unmarshaler
		// skips the other fields without decoding them.
		pom := &metav1.PartialObjectMetadata{}
		if err := pom.Unmarshal(unk.Raw); err != nil {
			return nil, err
		}
		return &Decoded{GVK: gvk, Object: pom, Partial: true}, nil
	}
	obj, _, err := c.proto.Decode(value, nil, nil)
	if err != nil {
		return nil, err
	}
	return &Decoded{GVK: gvk, Object: obj}, nil
}

func (c *Codec) decodeWith(s runtime.Decoder, value []byte) (*Decoded, error) {
	obj, gvk, err := s.Decode(value, nil, nil)
	if err == nil {
		return &Decoded{GVK: *gvk, Object: obj}, nil
	}
	if gvk == nil || !runtime.IsNotRegisteredError(err) {
		return nil, err
	}
	u := &unstructured.Unstructured{}
	if _, _, err := s.Decode(value, nil, u); err != nil {
		return nil, err
	}
	return &Decoded{GVK: u.GroupVersionKind(), Object: u}, nil
}

// Encode encodes obj as the API server would store it in encoding enc:
// with gvk as its apiVersion and kind and without resourceVersion or
// selfLink, which the API server never persists.
func (c *Codec) Encode(obj runtime.Object, gvk schema.GroupVersionKind, enc Encoding) ([]byte, error) {
	obj = obj.DeepCopyObject()
	obj.GetObjectKind().SetGroupVersionKind(gvk)
	if m, err := meta.Accessor(obj); err == nil {
		m.SetResourceVersion("")
		m.SetSelfLink("")
	}
	var s runtime.Encoder
	switch enc {
	case EncodingProtobuf:
		if _, ok := obj.(*metav1.PartialObjectMetadata); ok {
			return nil, fmt.Errorf("cannot encode %s: breakglass decoded only its metadata (its type is not in the client-go scheme)", gvk.Kind)
		}
		s = c.proto
	case EncodingJSON:
		s = c.json
	case EncodingCBOR:
		s = c.cbor
	default:
		return nil, fmt.Errorf("cannot encode as %s", enc)
	}
	var buf bytes.Buffer
	if err := s.Encode(obj, &buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
