package steps

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	flowcontrolv1 "k8s.io/api/flowcontrol/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/recover/change"
)

// The label and annotations on breakglass's flow-control objects. The
// expiry is for the operator and `shed list`: nothing on the apiserver
// removes a shed when it expires, it stays until it is lifted. Never add
// apf.kubernetes.io/autoupdate-spec: the apiserver deletes objects with
// names it does not know that carry it set to true.
const (
	FlowShedLabel         = "breakglass.io/shed"
	FlowChangeAnnotation  = "breakglass.io/change"
	FlowExpiresAnnotation = "breakglass.io/expires-at"
)

// The ops of flow-control changes in the journal.
const (
	OpFlowShed = "flow-shed"
	OpFlowLift = "flow-lift"
)

// FlowShedPrecedence is the matchingPrecedence of a shed's FlowSchema
// (lowest wins). In 1.31 the mandatory exempt schema has 1 (system:masters,
// the operator's own access, must keep winning) and the suggested probes
// schema 2 (GET /healthz, /livez, /readyz stay exempt, so load balancers
// keep seeing a healthy apiserver). Every other suggested schema a client
// can match starts at 100 (system-leader-election; then 150, 200, 400, 500,
// 800, 900, 9000, 9900, and catch-all 10000). 10 beats all of those and the
// usual custom schemas, and leaves 3-9 to an administrator's own
// emergency exemptions. Sheds that both match a request tie at 10 and the
// apiserver then takes the lexicographically smaller name.
const FlowShedPrecedence int32 = 10

// The bounds of a shed's TTL.
const (
	MinFlowShedTTL = time.Minute
	MaxFlowShedTTL = 24 * time.Hour
)

var (
	gvkFlowSchema    = flowcontrolv1.SchemeGroupVersion.WithKind("FlowSchema")
	gvkPriorityLevel = flowcontrolv1.SchemeGroupVersion.WithKind("PriorityLevelConfiguration")
)

// FlowShed is one identity to shed through API Priority and Fairness: a
// FlowSchema that matches every request of the identity and sends it to a
// priority level of its own with few or no seats, whose excess is
// answered 429 with Retry-After.
type FlowShed struct {
	ServiceAccount string // NAMESPACE/NAME, or NAMESPACE/* for all of them
	User, Group    string
	// Reject gives the level no seats (nominalConcurrencyShares 0, which
	// the 1.31 apiserver accepts and honours in v1) and no borrowing. The apiserver still
	// lets one request of the level run while none does (a request wider
	// than the limit is admitted when the level is idle), so at most one
	// request of the identity executes at a time and the rest get 429.
	Reject bool
	// Shares otherwise is the level's nominal concurrency shares (out of
	// about 245 for the 1.31 levels together); no borrowing beyond them.
	Shares int32
	TTL    time.Duration
	Now    time.Time
	// Force allows shedding control-plane identities (kube-system service
	// accounts, nodes, the controller manager, every authenticated user).
	// system:masters is refused even so.
	Force bool
}

// Identity says what is shed: "serviceaccount ci/runner", "user alice",
// "group devs".
func (f FlowShed) Identity() string {
	switch {
	case f.ServiceAccount != "":
		return "serviceaccount " + f.ServiceAccount
	case f.User != "":
		return "user " + f.User
	}
	return "group " + f.Group
}

// Validate checks the shed. Safety refusals are *change.RefusedError
// (exit 4); the other errors are usage errors.
func (f FlowShed) Validate() error {
	n := 0
	for _, s := range []string{f.ServiceAccount, f.User, f.Group} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		return errors.New("shed exactly one identity: --serviceaccount NAMESPACE/NAME, --user NAME or --group NAME")
	}
	if f.ServiceAccount != "" {
		ns, name, ok := strings.Cut(f.ServiceAccount, "/")
		if !ok || validation.IsDNS1123Label(ns) != nil || (name != "*" && validation.IsDNS1123Subdomain(name) != nil) {
			return fmt.Errorf("--serviceaccount %q: want NAMESPACE/NAME (NAME may be * for every service account of the namespace)", f.ServiceAccount)
		}
	}
	switch {
	case f.Reject && f.Shares != 0:
		return errors.New("--reject and --shares exclude each other")
	case !f.Reject && f.Shares <= 0:
		return errors.New("give --reject, or --shares N with N > 0")
	}
	if f.TTL < MinFlowShedTTL || f.TTL > MaxFlowShedTTL {
		return fmt.Errorf("--ttl %s: want between %s and %s", f.TTL, MinFlowShedTTL, MaxFlowShedTTL)
	}
	if f.Now.IsZero() {
		return errors.New("internal: FlowShed.Now is not set")
	}
	if f.Group == "system:masters" {
		return change.Refusedf("group system:masters cannot be shed: the apiserver's mandatory FlowSchema exempt (precedence 1) exempts it, and it is the operator's own access\nhint: shed the clients that overload the apiserver")
	}
	if why := f.controlPlane(); why != "" && !f.Force {
		return change.Refusedf("%s: %s\nhint: pass --force if shedding it is really what the incident needs", f.Identity(), why)
	}
	return nil
}

var flowControlPlaneUsers = map[string]bool{
	"system:kube-controller-manager": true, "system:kube-scheduler": true, "system:kube-proxy": true, "system:apiserver": true,
}

var flowWideGroups = map[string]bool{
	"*": true, "system:authenticated": true, "system:unauthenticated": true, "system:serviceaccounts": true,
	"system:serviceaccounts:kube-system": true, "system:nodes": true,
}

// controlPlane says why shedding the identity may take the cluster's own
// machinery down with the load, or returns "".
func (f FlowShed) controlPlane() string {
	switch {
	case strings.HasPrefix(f.ServiceAccount, "kube-system/") || strings.HasPrefix(f.User, "system:serviceaccount:kube-system:"):
		return "a kube-system service account: the control plane's controllers run as these"
	case f.User == "*":
		return "every user"
	case flowControlPlaneUsers[f.User] || strings.HasPrefix(f.User, "system:node:"):
		return "a control-plane or node identity"
	case flowWideGroups[f.Group]:
		return "a group of every client, every service account or every node"
	}
	return ""
}

func (f FlowShed) subject() (short, id string, s flowcontrolv1.Subject) {
	switch {
	case f.ServiceAccount != "":
		ns, name, _ := strings.Cut(f.ServiceAccount, "/")
		return "sa", ns + "-" + name, flowcontrolv1.Subject{Kind: flowcontrolv1.SubjectKindServiceAccount,
			ServiceAccount: &flowcontrolv1.ServiceAccountSubject{Namespace: ns, Name: name}}
	case f.User != "":
		return "user", f.User, flowcontrolv1.Subject{Kind: flowcontrolv1.SubjectKindUser, User: &flowcontrolv1.UserSubject{Name: f.User}}
	}
	return "group", f.Group, flowcontrolv1.Subject{Kind: flowcontrolv1.SubjectKindGroup, Group: &flowcontrolv1.GroupSubject{Name: f.Group}}
}

// Name is the name of both objects of the shed, a DNS-1123 label:
// "breakglass-shed-sa-ci-runner". When the identity does not fit or does
// not survive as a label unchanged ("alice@example.com"), a hash of it is
// appended, so that two identities do not share a name. (Two service
// accounts such as a-b/c and a/b-c still do: the second shed is refused,
// naming the first.)
func (f FlowShed) Name() string {
	short, id, _ := f.subject()
	clean := flowSanitize(id)
	prefix := "breakglass-shed-" + short + "-"
	if clean == id && len(prefix)+len(clean) <= validation.DNS1123LabelMaxLength {
		return prefix + clean
	}
	sum := sha256.Sum256([]byte(f.Identity()))
	hash := hex.EncodeToString(sum[:4])
	if room := validation.DNS1123LabelMaxLength - len(prefix) - len(hash) - 1; len(clean) > room {
		clean = strings.TrimRight(clean[:room], "-")
	}
	if clean == "" {
		return prefix + hash
	}
	return prefix + clean + "-" + hash
}

// flowSanitize lowercases s and turns every run of other characters than
// [a-z0-9] into one '-'.
func flowSanitize(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			dash = false
		} else if !dash {
			b.WriteByte('-')
			dash = true
		}
	}
	return strings.Trim(b.String(), "-")
}

func (f FlowShed) limit() string {
	if f.Reject {
		return "reject"
	}
	return fmt.Sprintf("%d shares", f.Shares)
}

// objects builds the two objects as the apiserver would have stored them
// on create (uid, creationTimestamp, generation 1), which breakglass
// bypasses.
func (f FlowShed) objects(id string) (*flowcontrolv1.PriorityLevelConfiguration, *flowcontrolv1.FlowSchema) {
	name := f.Name()
	now := f.Now.UTC().Truncate(time.Second)
	meta := func() metav1.ObjectMeta {
		return metav1.ObjectMeta{
			Name: name, UID: uuid.NewUUID(), Generation: 1, CreationTimestamp: metav1.NewTime(now),
			Labels:      map[string]string{FlowShedLabel: "true"},
			Annotations: map[string]string{FlowChangeAnnotation: id, FlowExpiresAnnotation: now.Add(f.TTL).Format(time.RFC3339)},
		}
	}
	plc := &flowcontrolv1.PriorityLevelConfiguration{ObjectMeta: meta(), Spec: flowcontrolv1.PriorityLevelConfigurationSpec{
		Type: flowcontrolv1.PriorityLevelEnablementLimited,
		Limited: &flowcontrolv1.LimitedPriorityLevelConfiguration{
			NominalConcurrencyShares: ptr.To(f.Shares),
			LendablePercent:          ptr.To(int32(0)),
			// Unset means it may borrow up to the whole server's
			// concurrency from idle levels: 0 holds it to its own seats.
			BorrowingLimitPercent: ptr.To(int32(0)),
			LimitResponse:         flowcontrolv1.LimitResponse{Type: flowcontrolv1.LimitResponseTypeReject},
		},
	}}
	_, _, subject := f.subject()
	fs := &flowcontrolv1.FlowSchema{ObjectMeta: meta(), Spec: flowcontrolv1.FlowSchemaSpec{
		PriorityLevelConfiguration: flowcontrolv1.PriorityLevelConfigurationReference{Name: name},
		MatchingPrecedence:         FlowShedPrecedence,
		DistinguisherMethod:        &flowcontrolv1.FlowDistinguisherMethod{Type: flowcontrolv1.FlowDistinguisherMethodByUserType},
		Rules: []flowcontrolv1.PolicyRulesWithSubjects{{
			Subjects: []flowcontrolv1.Subject{subject},
			ResourceRules: []flowcontrolv1.ResourcePolicyRule{{
				Verbs: []string{flowcontrolv1.VerbAll}, APIGroups: []string{flowcontrolv1.APIGroupAll},
				Resources: []string{flowcontrolv1.ResourceAll}, ClusterScope: true, Namespaces: []string{flowcontrolv1.NamespaceEvery},
			}},
			NonResourceRules: []flowcontrolv1.NonResourcePolicyRule{{
				Verbs: []string{flowcontrolv1.VerbAll}, NonResourceURLs: []string{flowcontrolv1.NonResourceAll},
			}},
		}},
	}}
	return plc, fs
}

// PlanFlowShed plans creating the shed's PriorityLevelConfiguration, then
// its FlowSchema (a FlowSchema whose level is missing is ignored, so the
// shed takes effect with the second write). Each is a compare-and-swap
// that expects the key absent. A shed that exists with the same spec is
// unchanged (a second run writes nothing, and does not extend the TTL);
// any other object of that name is refused.
func PlanFlowShed(k *change.Etcd, f FlowShed) change.Planner {
	return func(ctx context.Context, id string) (*change.Plan, error) {
		if err := f.Validate(); err != nil {
			return nil, err
		}
		fsR, plcR, err := flowResources(k.Store)
		if err != nil {
			return nil, err
		}
		enc, err := flowEncoding(ctx, k.Store, fsR)
		if err != nil {
			return nil, err
		}
		name := f.Name()
		expires := f.Now.UTC().Truncate(time.Second).Add(f.TTL).Format(time.RFC3339)
		p := &change.Plan{ID: id, Op: OpFlowShed, Title: fmt.Sprintf("shed %s through API Priority and Fairness (%s) until %s", f.Identity(), f.limit(), expires)}
		plc, fs := f.objects(id)
		for _, o := range []struct {
			r       etcd.Resource
			gvk     schema.GroupVersionKind
			obj     runtime.Object
			summary string
		}{
			{plcR, gvkPriorityLevel, plc, fmt.Sprintf("create prioritylevelconfiguration %s: Limited, %s, no borrowing, excess rejected", name, f.limit())},
			{fsR, gvkFlowSchema, fs, fmt.Sprintf("create flowschema %s: %s -> %s, precedence %d", name, f.Identity(), name, FlowShedPrecedence)},
		} {
			after, err := k.Store.Codec.Encode(o.obj, o.gvk, enc)
			if err != nil {
				return nil, fmt.Errorf("encode %s %s: %w", o.r.Singular, name, err)
			}
			key := k.Store.Layout.Key(o.r, "", name)
			sub, err := k.Plan(id, OpFlowShed, p.Title, func(w etcd.WriteOptions) (*etcd.Change, error) {
				return k.Store.PlanWrite(ctx, o.r, key, func(cur *mvccpb.KeyValue) ([]byte, bool, string, error) {
					if cur == nil {
						return after, false, o.summary, nil
					}
					return nil, false, "", sameFlowShed(k.Store, o.r, key, cur, o.obj)
				}, w)
			})
			if err != nil {
				return nil, err
			}
			p.Items = append(p.Items, sub.Items...)
			p.Unchanged = append(p.Unchanged, sub.Unchanged...)
		}
		if f.Reject {
			p.Notes = append(p.Notes, fmt.Sprintf("%s gets no seats: the apiserver runs at most one of its requests at a time (it admits one when the level is idle) and answers the rest 429", f.Identity()))
		}
		p.Notes = append(p.Notes, fmt.Sprintf("nothing on the apiserver removes the shed at %s: lift it (`shed lift %s`, or undo this change) when the incident is over", expires, name))
		return p, nil
	}
}

// sameFlowShed returns etcd.ErrNoChange when the object at key is this shed
// already (our label, the same spec), or refuses naming what is there.
func sameFlowShed(s *etcd.Store, r etcd.Resource, key string, cur *mvccpb.KeyValue, want runtime.Object) error {
	d, err := s.Codec.Decode(key, cur.Value, cur.ModRevision)
	if err != nil {
		return change.Refusedf("%s %s exists and cannot be read: %v\nhint: look at it with breakglass get", r.Singular, flowKeyName(key), err)
	}
	m := d.Meta()
	if m.GetLabels()[FlowShedLabel] != "true" {
		return change.Refusedf("%s %s exists and is not a breakglass shed (no label %s=true): nothing written\nhint: look at it with breakglass get %s %s -o yaml", r.Singular, m.GetName(), FlowShedLabel, r.GroupResource(), m.GetName())
	}
	var same bool
	switch w := want.(type) {
	case *flowcontrolv1.FlowSchema:
		got, ok := d.Object.(*flowcontrolv1.FlowSchema)
		same = ok && equality.Semantic.DeepEqual(got.Spec, w.Spec)
	case *flowcontrolv1.PriorityLevelConfiguration:
		got, ok := d.Object.(*flowcontrolv1.PriorityLevelConfiguration)
		same = ok && equality.Semantic.DeepEqual(got.Spec, w.Spec)
	}
	if !same {
		return change.Refusedf("shed %s exists with another spec (%s %s of change %s): nothing written\nhint: lift it first (shed lift %s), then shed again", m.GetName(), d.GVK.Kind, describeFlow(d.Object), m.GetAnnotations()[FlowChangeAnnotation], m.GetName())
	}
	return etcd.ErrNoChange
}

func describeFlow(obj runtime.Object) string {
	switch o := obj.(type) {
	case *flowcontrolv1.FlowSchema:
		return fmt.Sprintf("for %s, precedence %d", flowIdentity(o), o.Spec.MatchingPrecedence)
	case *flowcontrolv1.PriorityLevelConfiguration:
		reject, shares := flowLimit(o)
		if reject {
			return "reject"
		}
		return fmt.Sprintf("%d shares", shares)
	}
	return fmt.Sprintf("%T", obj)
}

func flowIdentity(fs *flowcontrolv1.FlowSchema) string {
	var ids []string
	for _, rule := range fs.Spec.Rules {
		for _, s := range rule.Subjects {
			switch {
			case s.ServiceAccount != nil:
				ids = append(ids, "serviceaccount "+s.ServiceAccount.Namespace+"/"+s.ServiceAccount.Name)
			case s.User != nil:
				ids = append(ids, "user "+s.User.Name)
			case s.Group != nil:
				ids = append(ids, "group "+s.Group.Name)
			}
		}
	}
	return strings.Join(ids, ", ")
}

func flowLimit(plc *flowcontrolv1.PriorityLevelConfiguration) (reject bool, shares int32) {
	if l := plc.Spec.Limited; l != nil && l.NominalConcurrencyShares != nil {
		return *l.NominalConcurrencyShares == 0, *l.NominalConcurrencyShares
	}
	return false, 0
}

func flowKeyName(key string) string { return key[strings.LastIndex(key, "/")+1:] }

func flowResources(s *etcd.Store) (fs, plc etcd.Resource, err error) {
	if fs, err = s.Layout.Lookup("flowschemas.flowcontrol.apiserver.k8s.io"); err != nil {
		return
	}
	plc, err = s.Layout.Lookup("prioritylevelconfigurations.flowcontrol.apiserver.k8s.io")
	return
}

// flowEncoding is how this apiserver stores flow-control objects, read
// from its mandatory FlowSchema exempt: protobuf unless it was started
// with another storage media type.
func flowEncoding(ctx context.Context, s *etcd.Store, fsR etcd.Resource) (etcd.Encoding, error) {
	kv, _, err := s.Get(ctx, s.Layout.Key(fsR, "", "exempt"), etcd.Linearizable)
	if err != nil || kv == nil {
		return etcd.EncodingProtobuf, err
	}
	switch enc := etcd.DetectEncoding(kv.Value); enc {
	case etcd.EncodingJSON, etcd.EncodingCBOR:
		return enc, nil
	case etcd.EncodingEncrypted:
		return "", change.Refusedf("flowschemas are encrypted at rest in this cluster: the apiserver would not read what breakglass writes in clear")
	}
	return etcd.EncodingProtobuf, nil
}
