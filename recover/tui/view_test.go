package tui

import (
	"fmt"
	"strings"
	"testing"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"

	"github.com/breakglass/breakglass/recover/change"
)

// Ten steps (two-digit numbers), with the longest step types there are.
var wideSteps = []Step{
	{ID: "find", Type: "diagnose", Title: "alpha: find the offender"},
	{ID: "shed", Type: "shed-network", Title: "bravo: shed admin traffic"},
	{ID: "class", Type: "priorityclass-neutralise", Title: "charlie: neutralise the class"},
	{ID: "kcm", Type: "controller-manager-restore", Title: "delta: restart the controller manager"},
	{ID: "hold", Type: "hold-pods", Title: "echo: hold the offender"},
	{ID: "healthy", Type: "wait-until", Title: "foxtrot: wait for the apiserver"},
	{ID: "limit", Type: "shed-network", Title: "golf: lift, step 1"},
	{ID: "lift", Type: "shed-lift", Title: "hotel: lift, step 2"},
	{ID: "ok", Type: "verify", Title: "india: recovered"},
	{ID: "next", Type: "note"},
}

// stepRows are the steps' lines of the screen (inside the box), and where
// each title starts (in cells from the line's start).
func stepRows(t *testing.T, m Model) (rows []string, titleAt []int) {
	t.Helper()
	for _, l := range strings.Split(m.View(), "\n") {
		if !strings.HasPrefix(l, "│") {
			continue
		}
		rows = append(rows, l)
		i := len(rows) - 1
		if i >= len(wideSteps) {
			t.Fatalf("more step lines than steps (a line wrapped?):\n%s", m.View())
		}
		title := wideSteps[i].Title
		if title == "" {
			title = wideSteps[i].ID
		}
		at := strings.Index(l, title[:4])
		if at < 0 {
			t.Fatalf("step %d's title %q not in %q", i+1, title, l)
		}
		titleAt = append(titleAt, lipgloss.Width(l[:at]))
	}
	if len(rows) != len(wideSteps) {
		t.Fatalf("%d step lines for %d steps:\n%s", len(rows), len(wideSteps), m.View())
	}
	return rows, titleAt
}

// The type column is as wide as the longest type: at 80 columns every
// type is whole and the titles start in one column; on a narrow screen the
// long types are cut with an ellipsis and the titles still line up; no
// line is wider than the screen, or wraps.
func TestStepsTypeColumnAligns(t *testing.T) {
	for _, width := range []int{80, 46} {
		t.Run(fmt.Sprint(width), func(t *testing.T) {
			m, _ := update(t, New("x", wideSteps, nil, nil), tea.WindowSizeMsg{Width: width, Height: 30})
			m, _ = update(t, m, EventMsg{change.StepStarted{Index: 10, ID: "next", Type: "note"}})
			rows, at := stepRows(t, m)
			for i, r := range rows {
				if at[i] != at[0] {
					t.Errorf("step %d's title starts at %d, step 1's at %d:\n%s", i+1, at[i], at[0], strings.Join(rows, "\n"))
				}
				if w := lipgloss.Width(r); w > width {
					t.Errorf("step %d's line is %d wide on a %d-column screen: %q", i+1, w, width, r)
				}
			}
			if !strings.Contains(rows[9], "> 10 running") || !strings.Contains(rows[0], "   1 pending") {
				t.Errorf("numbers and statuses not in columns:\n%s", strings.Join(rows, "\n"))
			}
			long := rows[3]
			switch width {
			case 80:
				if !strings.Contains(long, "controller-manager-restore delta") || !strings.Contains(rows[2], "priorityclass-neutralise   charlie") {
					t.Errorf("the long types are not whole, one space before the title:\n%s", strings.Join(rows, "\n"))
				}
			default:
				if !strings.Contains(long, "control… delta") || strings.Contains(long, "controller-manager-restore") {
					t.Errorf("a long type is not cut with an ellipsis on %d columns:\n%s", width, strings.Join(rows, "\n"))
				}
			}
		})
	}
}

// A runbook of short types keeps a narrow column.
func TestStepsTypeColumnFitsShortTypes(t *testing.T) {
	m := New("x", []Step{{ID: "a", Type: "note", Title: "first"}, {ID: "b", Type: "verify", Title: "second"}}, nil, nil)
	if v := m.View(); !strings.Contains(v, "1 pending    note   first") || !strings.Contains(v, "2 pending    verify second") {
		t.Errorf("short types:\n%s", v)
	}
}
