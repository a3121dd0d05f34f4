package tui

import (
	"fmt"
	"strings"

	"github.com/charmbracelet/bubbles/key"
	"github.com/charmbracelet/bubbles/list"
	"github.com/charmbracelet/bubbles/textinput"
	tea "github.com/charmbracelet/bubbletea"
)

// PickItem is a runbook the picker offers.
type PickItem struct {
	Name string
	// Summary is the first line of its description; Text all of it.
	Summary string
	Text    string
	Params  []PickParam
}

// PickParam is a parameter of a runbook, asked for once the runbook is
// chosen.
type PickParam struct {
	Name, Type, Default, Description string
	Required                         bool
}

func (i PickItem) Title() string       { return i.Name }
func (i PickItem) FilterValue() string { return i.Name }
func (i PickItem) Description() string { return i.Summary }

// Picker is the screen of `breakglass` with no arguments in a terminal:
// the built-in runbooks in a list (bubbles/list), Enter chooses one, then
// each of its parameters is asked for (bubbles/textinput, defaults filled
// in), Enter on the last one ends the picker with the choice. Esc goes
// back; q (in the list) or Ctrl-C leaves with no choice.
type Picker struct {
	list   list.Model
	chosen *PickItem
	// form: the parameter being asked for, and the values so far.
	param  int
	input  textinput.Model
	values map[string]string
	err    string
	done   bool
}

// NewPicker offers items.
func NewPicker(items []PickItem) Picker {
	li := make([]list.Item, len(items))
	for i, it := range items {
		li[i] = it
	}
	l := list.New(li, list.NewDefaultDelegate(), 80, 20)
	l.Title = "breakglass: choose a runbook (enter), q to quit"
	l.SetShowStatusBar(false)
	l.AdditionalFullHelpKeys = func() []key.Binding {
		return []key.Binding{key.NewBinding(key.WithKeys("enter"), key.WithHelp("enter", "run it (its parameters are asked next)"))}
	}
	return Picker{list: l}
}

// Init does nothing: the list is there from the start.
func (p Picker) Init() tea.Cmd { return nil }

// Chosen is the runbook chosen and the parameters given (those left at
// their default are not in it), or ok false when the operator left.
func (p Picker) Chosen() (name string, params map[string]string, ok bool) {
	if !p.done || p.chosen == nil {
		return "", nil, false
	}
	return p.chosen.Name, p.values, true
}

// Update handles the keys of the list, then of the form.
func (p Picker) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		p.list.SetSize(msg.Width, msg.Height-1)
	case tea.KeyMsg:
		if msg.String() == "ctrl+c" {
			p.chosen = nil
			return p, tea.Quit
		}
		if p.chosen != nil {
			return p.formKey(msg)
		}
		if p.list.FilterState() != list.Filtering {
			switch msg.String() {
			case "q", "esc":
				return p, tea.Quit
			case "enter":
				it, ok := p.list.SelectedItem().(PickItem)
				if !ok {
					return p, nil
				}
				p.chosen, p.values, p.param = &it, map[string]string{}, 0
				if len(it.Params) == 0 {
					p.done = true
					return p, tea.Quit
				}
				return p, p.ask()
			}
		}
	}
	var cmd tea.Cmd
	if p.chosen == nil {
		p.list, cmd = p.list.Update(msg)
	}
	return p, cmd
}

// ask shows the input of the current parameter, its default filled in.
func (p *Picker) ask() tea.Cmd {
	prm := p.chosen.Params[p.param]
	p.input = textinput.New()
	p.input.Prompt = prm.Name + " (" + prm.Type + "): "
	p.input.SetValue(prm.Default)
	if v, ok := p.values[prm.Name]; ok {
		p.input.SetValue(v)
	}
	p.err = ""
	return p.input.Focus()
}

func (p Picker) formKey(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	switch k.String() {
	case "esc":
		if p.param == 0 {
			p.chosen = nil
			return p, nil
		}
		p.param--
		return p, p.ask()
	case "enter":
		prm := p.chosen.Params[p.param]
		v := strings.TrimSpace(p.input.Value())
		if v == "" && prm.Required {
			p.err = prm.Name + " is required"
			return p, nil
		}
		if v != prm.Default {
			p.values[prm.Name] = v
		} else {
			delete(p.values, prm.Name)
		}
		if p.param == len(p.chosen.Params)-1 {
			p.done = true
			return p, tea.Quit
		}
		p.param++
		return p, p.ask()
	}
	var cmd tea.Cmd
	p.input, cmd = p.input.Update(k)
	return p, cmd
}

// View renders the list, or the form of the chosen runbook.
func (p Picker) View() string {
	if p.done {
		return ""
	}
	if p.chosen == nil {
		return p.list.View()
	}
	var b strings.Builder
	b.WriteString(titleStyle.Render("runbook "+p.chosen.Name) + "\n\n")
	b.WriteString(strings.TrimSpace(p.chosen.Text) + "\n\n")
	prm := p.chosen.Params[p.param]
	req := ""
	if prm.Required {
		req = ", required"
	}
	fmt.Fprintf(&b, "parameter %d of %d%s: %s\n", p.param+1, len(p.chosen.Params), req, prm.Description)
	b.WriteString(p.input.View() + "\n")
	if p.err != "" {
		b.WriteString(askStyle.Render(p.err) + "\n")
	}
	b.WriteString("\nenter next (on the last: run it; every step is still planned and asked about), esc back, ctrl+c quit\n")
	return b.String()
}
