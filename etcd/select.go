package etcd

import (
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/selection"
)

// Selector is a kubectl label selector (-l) and field selector
// (--field-selector). Labels and metadata.name/metadata.namespace are
// answered from the metadata alone; other fields need the full object.
type Selector struct {
	Labels labels.Selector
	Fields fields.Selector
}

// ParseSelector parses kubectl's -l and --field-selector syntax with
// apimachinery's own parsers, the ones --nodes label= uses too. Errors name
// the flag and the text, with a hint.
func ParseSelector(label, field string) (Selector, error) {
	s := Selector{Labels: labels.Everything(), Fields: fields.Everything()}
	if label != "" {
		l, err := labels.Parse(label)
		if err != nil {
			return s, fmt.Errorf("-l %q: not a label selector: %w\n%s", label, err, labelSelectorHint)
		}
		s.Labels = l
	}
	if field != "" {
		f, err := fields.ParseSelector(field)
		if err != nil {
			return s, fmt.Errorf("--field-selector %q: not a field selector: %w\n%s", field, err, fieldSelectorHint)
		}
		s.Fields = f
	}
	return s, nil
}

const (
	labelSelectorHint = "hint: -l takes a label selector as kubectl does: KEY=VALUE, KEY!=VALUE, 'KEY in (A,B)', 'KEY notin (A,B)', KEY (has the label) or '!KEY', joined by commas (all must hold)"
	fieldSelectorHint = "hint: --field-selector takes FIELD=VALUE or FIELD!=VALUE, joined by commas (all must hold), e.g. spec.nodeName=node-1"
)

// Empty reports whether the selector selects everything.
func (s Selector) Empty() bool { return s.Labels.Empty() && s.Fields.Empty() }

// metaOnlyField reports whether a field is answered by metadata.
func metaOnlyField(f string) bool { return f == "metadata.name" || f == "metadata.namespace" }

// NeedsObject reports whether the field selector needs more than metadata.
func (s Selector) NeedsObject() bool {
	for _, r := range s.Fields.Requirements() {
		if !metaOnlyField(r.Field) {
			return true
		}
	}
	return false
}

// MatchMeta checks the labels and the metadata fields.
func (s Selector) MatchMeta(o *Object) bool {
	if o.Decoded == nil {
		return true
	}
	m := o.Decoded.Meta()
	if !s.Labels.Matches(labels.Set(m.GetLabels())) {
		return false
	}
	for _, r := range s.Fields.Requirements() {
		if !metaOnlyField(r.Field) {
			continue
		}
		v := m.GetName()
		if r.Field == "metadata.namespace" {
			v = m.GetNamespace()
		}
		if (r.Operator == selection.NotEquals) == (v == r.Value) {
			return false
		}
	}
	return true
}

// MatchObject checks the whole field selector against a decoded object.
func (s Selector) MatchObject(o *Object) bool {
	if o.Decoded == nil || s.Fields.Empty() {
		return true
	}
	return s.Fields.Matches(fieldSet(o.Decoded.Object, s.Fields.Requirements()))
}

// fieldSet returns the values of the fields a selector asks about. Pods, the
// objects there are most of, have a fast path; any other field is looked up
// by its JSON path, so every field kubectl accepts (and more) works.
func fieldSet(obj runtime.Object, reqs fields.Requirements) fields.Set {
	set := fields.Set{}
	if p, ok := obj.(*corev1.Pod); ok {
		set["metadata.name"] = p.Name
		set["metadata.namespace"] = p.Namespace
		set["spec.nodeName"] = p.Spec.NodeName
		set["spec.restartPolicy"] = string(p.Spec.RestartPolicy)
		set["spec.schedulerName"] = p.Spec.SchedulerName
		set["spec.serviceAccountName"] = p.Spec.ServiceAccountName
		set["spec.hostNetwork"] = strconv.FormatBool(p.Spec.HostNetwork)
		set["status.phase"] = string(p.Status.Phase)
		set["status.podIP"] = p.Status.PodIP
		set["status.nominatedNodeName"] = p.Status.NominatedNodeName
	}
	var u map[string]any
	for _, r := range reqs {
		if _, ok := set[r.Field]; ok {
			continue
		}
		if u == nil {
			if us, ok := obj.(*unstructured.Unstructured); ok {
				u = us.Object
			} else {
				var err error
				if u, err = runtime.DefaultUnstructuredConverter.ToUnstructured(obj); err != nil {
					u = map[string]any{}
				}
			}
		}
		v, found, _ := unstructured.NestedFieldNoCopy(u, strings.Split(r.Field, ".")...)
		if found && v != nil {
			set[r.Field] = fmt.Sprint(v)
		} else {
			set[r.Field] = ""
		}
	}
	return set
}
