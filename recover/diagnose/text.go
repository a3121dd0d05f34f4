package diagnose

import (
	"fmt"
	"io"
	"strings"
)

// WriteText writes the one-screen summary of a report: what is wrong, who
// is doing it, what to run, and what the diagnosis cost.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	c := r.Census

	// The verdict first.
	if r.Suspect != nil {
		s := r.Suspect
		p("TOP SUSPECT  %s %s  (score %.0f)", s.Kind, s.Ref(), s.Score)
		for _, why := range s.Why {
			p("  - %s", why)
		}
		if len(s.Commands) > 0 {
			p("  next: %s", s.Commands[0])
			for _, cmd := range s.Commands[1:] {
				p("        %s", cmd)
			}
		}
	} else {
		p("NO SUSPECT above threshold")
	}
	var others []string
	for _, s := range r.Suspects {
		if r.Suspect != nil && s.Rank == r.Suspect.Rank {
			continue
		}
		if len(others) == 4 {
			break
		}
		mark := ""
		if s.AboveThreshold {
			mark = " !"
		}
		others = append(others, fmt.Sprintf("  %d. %s %s (score %.0f%s): %s", s.Rank, s.Kind, s.Ref(), s.Score, mark, firstOr(s.Why, "")))
	}
	if len(others) > 0 {
		p("other suspects:")
		for _, o := range others {
			p("%s", o)
		}
	}
	p("")

	// The control plane.
	for _, cp := range r.ControlPlane {
		line := fmt.Sprintf("apiserver %-10s", cp.Node)
		if h := cp.Health; h != nil {
			ready := "NOT READY"
			switch {
			case h.Ready:
				ready = "ready"
			case h.Code == 0:
				ready = "unknown"
			}
			if h.Code == 0 {
				line += fmt.Sprintf(" %s (no answer to readyz in %dms)", ready, h.LatencyMs)
			} else {
				line += fmt.Sprintf(" %s (readyz %d in %dms)", ready, h.Code, h.LatencyMs)
			}
			if h.Metrics {
				line += fmt.Sprintf("  inflight ro %.0f mut %.0f  429s %.0f", h.Inflight["readOnly"], h.Inflight["mutating"], h.Rejected429)
			} else {
				line += "  metrics unread"
			}
			if h.APF {
				var rej float64
				for _, l := range h.Levels {
					rej += l.Rejected
				}
				line += fmt.Sprintf("  APF rejected %.0f", rej)
			}
			if len(h.Problems) > 0 {
				line += "  (" + strings.Join(h.Problems, "; ") + ")"
			}
		} else if cp.Error != "" {
			line += " unknown: " + firstLine(cp.Error)
		}
		p("%s", line)
		if len(cp.Sources) > 0 {
			var src []string
			for i, s := range cp.Sources {
				if i == 5 {
					src = append(src, "...")
					break
				}
				name := s.Address
				if s.Node != "" {
					name = s.Node
				}
				src = append(src, fmt.Sprintf("%s %d", name, s.Conns))
			}
			p("  %d connections in: %s", cp.Inbound, strings.Join(src, ", "))
		}
	}
	if c != nil {
		for _, m := range c.Etcd {
			state := "healthy"
			if !m.Healthy {
				state = "UNHEALTHY " + strings.Join(m.Errors, "; ")
			}
			p("etcd %s %s  db %s (in use %s)", m.Endpoint, state, bytesString(m.DBSize), bytesString(m.DBSizeInUse))
		}
		n := c.Nodes
		p("nodes %d/%d Ready  leases: %d stale (> %s), oldest %s, median %s", n.Ready, n.Total, n.StaleLeases, "40s", n.OldestLease, n.MedianLease)
	}
	if r.DNS != nil {
		p("%s", r.DNS.Line())
		if len(r.DNS.Failing) > 0 {
			p("  failing on: %s", strings.Join(r.DNS.Failing, ", "))
		}
	}
	p("")

	// Who talks to the API server.
	if len(r.Talkers) > 0 {
		p("%-12s %-44s %6s %6s %5s", "CLIENT", "NAME", "CONNS", "SHARE", "NODES")
		for i, t := range r.Talkers {
			if i == 6 {
				p("  ... %d more (see -o json)", len(r.Talkers)-i)
				break
			}
			p("%-12s %-44s %6d %5.0f%% %5d", t.Kind, t.Ref(), t.Conns, 100*t.Share, len(t.PerNode))
		}
		p("")
	}
	if c != nil {
		var recent []string
		for _, w := range c.Workloads {
			if w.Recent {
				recent = append(recent, fmt.Sprintf("%s %s (%d pods)", w.Kind, w.Ref(), w.Pods))
			}
		}
		if len(recent) > 0 {
			p("new or changed in the last %ds: %s", r.SinceS, strings.Join(recent, ", "))
		}
	}
	for _, note := range r.Notes {
		p("note: %s", note)
	}
	p("diagnose: %dms, etcd %d reads (%d keys, %s), ssh %d sessions + %d containerd + %d DNS tunnels on %d nodes (%d failed)",
		r.TookMs, r.Reads.Ranges+r.Reads.Status, r.Reads.Keys, bytesString(r.Reads.Bytes), r.SSH.Sessions, r.SSH.Containerd, r.SSH.Tunnels, r.SSH.Nodes, r.SSH.Failed)
	_, err := io.WriteString(w, b.String())
	return err
}

func firstOr(s []string, def string) string {
	if len(s) == 0 {
		return def
	}
	return s[0]
}

func firstLine(s string) string {
	first, _, _ := strings.Cut(s, "\n")
	return first
}
