package tui

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/charmbracelet/bubbles/key"
	"github.com/charmbracelet/lipgloss"
)

var (
	titleStyle = lipgloss.NewStyle().Bold(true)
	boxStyle   = lipgloss.NewStyle().Border(lipgloss.NormalBorder()).Padding(0, 1)
	askStyle   = lipgloss.NewStyle().Bold(true).Reverse(true)
	statusMark = map[string]string{"pending": " ", "running": ">", "applied": "✓", "unchanged": "=", "planned": "~", "done": "✓",
		"skipped": "-", "deferred": "?", "failed": "✗", "undone": "↺"}
)

// View renders the screen.
func (m Model) View() string {
	var b strings.Builder
	head := "runbook " + m.runbook
	if m.runID != "" {
		head += "  " + m.runID
	}
	b.WriteString(titleStyle.Render(head) + "\n")
	w := max(m.width-4, 20)
	b.WriteString(m.health.view(m.now(), w+4))
	b.WriteString(boxStyle.Width(w).Render(m.stepLines(w-2)) + "\n")
	if m.current >= 0 && (len(m.plan) > 0 || m.total > 0) {
		var plan strings.Builder
		plan.WriteString(fmt.Sprintf("step %d plan", m.current+1))
		if m.total > 0 {
			plan.WriteString("  " + progressBar(m.done, m.total, 30))
		}
		plan.WriteString("\n")
		room := max(m.height-len(m.steps)-logLines-12, 3)
		for i, l := range m.plan {
			if i == room {
				plan.WriteString(fmt.Sprintf("... %d more lines\n", len(m.plan)-room))
				break
			}
			plan.WriteString(truncate(l, w-2) + "\n")
		}
		b.WriteString(boxStyle.Width(w).Render(strings.TrimRight(plan.String(), "\n")) + "\n")
	}
	logs := m.log
	if len(logs) > logLines {
		logs = logs[len(logs)-logLines:]
	}
	for _, l := range logs {
		b.WriteString(truncate(l, w+4) + "\n")
	}
	switch q := m.top(); {
	case q != nil:
		choices := "y/n"
		if m.canSkip() {
			choices = "y/n/s"
		}
		b.WriteString(askStyle.Render(q.Question+"? ["+choices+"]") + "\n")
	case m.finished:
		b.WriteString("finished: " + m.status + "  (q to quit)\n")
	}
	hm := m.help
	hm.Width = w + 4
	if hm.ShowAll {
		b.WriteString("keys:\n" + hm.View(m.keys()) + "\n")
	} else {
		b.WriteString(hm.ShortHelpView([]key.Binding{m.keys().Help}) + "\n")
	}
	return b.String()
}

// The steps' type column is as wide as the runbook's longest type, up to
// maxTypeWidth; on a screen too narrow to keep minTitleWidth for the
// titles it narrows (to minTypeWidth at least), and the types that do not
// fit are cut with an ellipsis, so that the titles stay in one column.
const (
	maxTypeWidth  = 28
	minTypeWidth  = 8
	minTitleWidth = 16
	statusWidth   = 10 // "unchanged", the longest status, and a space after it
)

// stepLines is the steps list, each line at most cw cells.
func (m Model) stepLines(cw int) string {
	idxW := len(strconv.Itoa(len(m.steps)))
	typeW := 4
	for _, s := range m.steps {
		typeW = max(typeW, lipgloss.Width(s.Type))
	}
	typeW = min(typeW, maxTypeWidth)
	// The mark, the number and the status, each followed by a space.
	fixed := 1 + 1 + idxW + 1 + statusWidth + 1
	if room := cw - fixed - 1 - minTitleWidth; typeW > room {
		typeW = max(room, minTypeWidth)
	}
	var b strings.Builder
	for i, s := range m.steps {
		title := s.Title
		if title == "" {
			title = s.ID
		}
		line := fmt.Sprintf("%s %*d %s %s %s", statusMark[s.status], idxW, i+1, pad(s.status, statusWidth), pad(truncate(s.Type, typeW), typeW), title)
		if s.detail != "" {
			line += "  (" + s.detail + ")"
		}
		if i > 0 {
			b.WriteString("\n")
		}
		b.WriteString(truncate(line, cw))
	}
	return b.String()
}

// pad fills s with spaces to n cells.
func pad(s string, n int) string {
	return s + strings.Repeat(" ", max(n-lipgloss.Width(s), 0))
}

func truncate(s string, n int) string {
	if n <= 1 || lipgloss.Width(s) <= n {
		return s
	}
	r := []rune(s)
	if len(r) > n-1 {
		r = r[:n-1]
	}
	return string(r) + "…"
}

func progressBar(done, total, width int) string {
	if total <= 0 {
		return ""
	}
	filled := width * min(done, total) / total
	return fmt.Sprintf("[%s%s] %d/%d", strings.Repeat("=", filled), strings.Repeat(" ", width-filled), done, total)
}
