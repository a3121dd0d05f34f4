package runbook

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// reportTime is how the report writes a time: UTC, to the millisecond.
const reportTime = "2006-01-02T15:04:05.000Z"

func rtime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(reportTime)
}

// cell makes s fit in a Markdown table cell: one line, pipes escaped.
func cell(s string) string {
	s = strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
	if s == "" {
		return "-"
	}
	return strings.ReplaceAll(s, "|", `\|`)
}

func code(s string) string { return "`" + strings.ReplaceAll(s, "`", "'") + "`" }

func sortedPairs(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, code(k+"="+m[k]))
	}
	return strings.Join(parts, ", ")
}

func roundDuration(d time.Duration) string {
	switch {
	case d >= time.Minute:
		return d.Round(time.Second).String()
	case d >= time.Second:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Millisecond).String()
}

func (s *ReportStep) name() string {
	if s.ID == "" {
		return fmt.Sprintf("%d", s.Index)
	}
	return fmt.Sprintf("%d %s", s.Index, s.ID)
}

type timelineEntry struct {
	at   time.Time
	step string
	what string
}

// Timeline is every journaled moment of the run in time order: its start,
// resumes and end, each step's start and end, each change to each target,
// the undos.
func (r *Report) timeline() []timelineEntry {
	out := []timelineEntry{{r.Started, "-", "run started by " + r.Operator}}
	for _, res := range r.Resumes {
		out = append(out, timelineEntry{res.Time, "-", "run resumed by " + res.Operator})
	}
	for i := range r.Steps {
		s := &r.Steps[i]
		for n, o := range s.Outcomes {
			if !o.Started.IsZero() {
				out = append(out, timelineEntry{o.Started, s.name(), "started"})
			}
			what := o.Status
			if n == len(s.Outcomes)-1 && s.SkippedBy != "" {
				what += " by the " + s.SkippedBy
			}
			if o.Error != "" {
				what += ": " + o.Error
			}
			out = append(out, timelineEntry{o.Finished, s.name(), what})
		}
		for _, c := range s.Changes {
			for _, t := range c.Targets {
				out = append(out, timelineEntry{t.Time, s.name(), fmt.Sprintf("%s: %s (%s, change %s, by %s)", t.Where, t.Summary, t.Status, c.ID, t.Operator)})
			}
		}
	}
	if !r.HealthyAt.IsZero() {
		out = append(out, timelineEntry{r.HealthyAt, fmt.Sprintf("%d", r.HealthyStep), "apiserver healthy: it answered within its SLO"})
	}
	if !r.Ended.IsZero() {
		what := "run ended: " + r.Status
		if r.Error != "" {
			what += ": " + r.Error
		}
		out = append(out, timelineEntry{r.Ended, "-", what})
	}
	for _, u := range r.Undos {
		what := "run undone by " + u.Operator
		if u.Step != 0 {
			what = fmt.Sprintf("step %d undone by %s", u.Step, u.Operator)
		}
		out = append(out, timelineEntry{u.Time, "-", what})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].at.Before(out[j].at) })
	return out
}

// Markdown writes the report for a postmortem.
func (r *Report) Markdown(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# Incident timeline: runbook %s, run %s\n\n", r.Runbook, r.RunID)
	b.WriteString("| | |\n|---|---|\n")
	fmt.Fprintf(&b, "| Runbook | %s (%s) |\n", code(r.Runbook), cell(r.Source))
	params := "none"
	if len(r.Params) > 0 {
		params = sortedPairs(r.Params)
	}
	fmt.Fprintf(&b, "| Parameters | %s |\n", params)
	fmt.Fprintf(&b, "| Operator | %s |\n", cell(r.Operator))
	fmt.Fprintf(&b, "| Started | %s |\n", rtime(r.Started))
	if r.Ended.IsZero() {
		b.WriteString("| Ended | not ended: interrupted or still running (breakglass runbook resume " + r.RunID + ") |\n")
	} else {
		fmt.Fprintf(&b, "| Ended | %s: %s after %s |\n", rtime(r.Ended), cell(r.Status), roundDuration(r.Ended.Sub(r.Started)))
	}
	if ttr := r.TimeToRecovery(); ttr > 0 {
		fmt.Fprintf(&b, "| Time to recovery | %s: the apiserver answered within its SLO at %s (step %d) |\n", roundDuration(ttr), rtime(r.HealthyAt), r.HealthyStep)
	} else {
		b.WriteString("| Time to recovery | not recorded: no apiserver check held during the run |\n")
	}
	for _, res := range r.Resumes {
		fmt.Fprintf(&b, "| Resumed | %s by %s |\n", rtime(res.Time), cell(res.Operator))
	}
	for _, u := range r.Undos {
		what := "the whole run"
		if u.Step != 0 {
			what = fmt.Sprintf("step %d", u.Step)
		}
		fmt.Fprintf(&b, "| Undone | %s: %s by %s |\n", rtime(u.Time), what, cell(u.Operator))
	}
	if r.Error != "" {
		fmt.Fprintf(&b, "| Error | %s |\n", cell(r.Error))
	}
	fmt.Fprintf(&b, "| Undo the run | %s |\n", code(r.Undo))

	b.WriteString("\n## Timeline\n\n| Time (UTC) | Step | What |\n|---|---|---|\n")
	for _, e := range r.timeline() {
		fmt.Fprintf(&b, "| %s | %s | %s |\n", rtime(e.at), cell(e.step), cell(e.what))
	}

	b.WriteString("\n## Steps\n")
	for i := range r.Steps {
		s := &r.Steps[i]
		status := s.Status
		if status == "" {
			status = "not run"
		}
		fmt.Fprintf(&b, "\n### %d. %s: %s (%s): %s\n\n", s.Index, s.ID, s.Title, s.Type, status)
		if !s.Finished.IsZero() {
			took := ""
			if !s.Started.IsZero() {
				took = " (" + roundDuration(s.Finished.Sub(s.Started)) + ")"
			}
			fmt.Fprintf(&b, "- started %s, ended %s%s\n", rtime(s.Started), rtime(s.Finished), took)
		}
		if s.SkippedBy != "" {
			fmt.Fprintf(&b, "- skipped by the %s\n", s.SkippedBy)
		}
		if s.Error != "" {
			fmt.Fprintf(&b, "- error: %s\n", cell(s.Error))
		}
		for _, o := range s.Outcomes[:max(len(s.Outcomes)-1, 0)] {
			line := fmt.Sprintf("- before: %s at %s", o.Status, rtime(o.Finished))
			if o.Error != "" {
				line += ": " + cell(o.Error)
			}
			b.WriteString(line + " (the run was resumed)\n")
		}
		if len(s.Result) > 0 {
			fmt.Fprintf(&b, "- observed: %s\n", sortedPairs(s.Result))
		}
		if len(s.Changes) == 0 {
			if s.Status != "" {
				b.WriteString("- changes: none\n")
			}
			continue
		}
		b.WriteString("\n| Change | Time (UTC) | Who | Where | What | Status |\n|---|---|---|---|---|---|\n")
		for _, c := range s.Changes {
			if len(c.Targets) == 0 {
				fmt.Fprintf(&b, "| %s | - | - | - | wrote nothing | - |\n", c.ID)
			}
			for _, t := range c.Targets {
				st := t.Status
				if t.Error != "" {
					st += ": " + t.Error
				}
				fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", c.ID, rtime(t.Time), cell(t.Operator), cell(t.Where), cell(t.Summary), cell(st))
			}
		}
		b.WriteString("\n")
		for _, c := range s.Changes {
			undo := c.Undo
			if strings.HasPrefix(undo, "breakglass ") {
				undo = code(undo)
			}
			line := fmt.Sprintf("- undo %s: %s", c.ID, undo)
			if c.Op != "" {
				line = fmt.Sprintf("- undo %s (%s): %s", c.ID, c.Op, undo)
			}
			if len(c.UndoneBy) > 0 {
				line += "; undone since by " + strings.Join(c.UndoneBy, ", ")
			}
			b.WriteString(line + "\n")
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
