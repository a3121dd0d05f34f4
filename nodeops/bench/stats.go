package main

import (
	"slices"
	"time"

	"github.com/breakglass/breakglass/lab/benchstat"
)

// Every client of a table runs the same number of rounds, interleaved, and
// the tables print each client's median (and min): a client is never shown
// at its best round beside another's single run.

// collect maps each of xs to a value.
func collect[R any, T any](xs []R, f func(R) T) []T {
	out := make([]T, 0, len(xs))
	for _, x := range xs {
		out = append(out, f(x))
	}
	return out
}

// realStats is one client's rounds on the real sshd nodes.
type realStats struct {
	tool             string
	nodes, rounds    int
	okMin            int // fewest nodes ok in any round
	wallMed, wallMin time.Duration
	cpuMed, cpuMin   time.Duration
	first            row // round 1
	reused           int // rounds that found SSH connections kept open (ControlPersist)
}

// summarize groups the rows by client, in the order the clients first ran.
func summarize(rows []row) ([]string, map[string]realStats) {
	byTool := map[string][]row{}
	var order []string
	for _, r := range rows {
		if _, seen := byTool[r.tool]; !seen {
			order = append(order, r.tool)
		}
		byTool[r.tool] = append(byTool[r.tool], r)
	}
	out := map[string]realStats{}
	for t, rs := range byTool {
		walls := collect(rs, func(r row) time.Duration { return r.wall })
		cpus := collect(rs, func(r row) time.Duration { return r.cpu })
		s := realStats{tool: t, nodes: rs[0].nodes, rounds: len(rs), first: rs[0],
			okMin:   slices.Min(collect(rs, func(r row) int { return r.ok })),
			wallMed: benchstat.Median(walls), wallMin: slices.Min(walls),
			cpuMed: benchstat.Median(cpus), cpuMin: slices.Min(cpus)}
		for _, r := range rs {
			if r.reused {
				s.reused++
			}
		}
		out[t] = s
	}
	return order, out
}

// simStats is one simulated client's rounds: every field is the median of
// the rounds, but wallMin.
type simStats struct {
	simResult
	rounds  int
	wallMin time.Duration
	okMin   int
}

func summarizeSim(rs []simResult) simStats {
	walls := collect(rs, func(r simResult) time.Duration { return r.Wall })
	return simStats{
		simResult: simResult{
			Name:      rs[0].Name,
			Nodes:     rs[0].Nodes,
			OK:        benchstat.Median(collect(rs, func(r simResult) int { return r.OK })),
			Wall:      benchstat.Median(walls),
			CPU:       benchstat.Median(collect(rs, func(r simResult) time.Duration { return r.CPU })),
			PeakRSS:   benchstat.Median(collect(rs, func(r simResult) int64 { return r.PeakRSS })),
			PeakG:     benchstat.Median(collect(rs, func(r simResult) int { return r.PeakG })),
			PeakConns: benchstat.Median(collect(rs, func(r simResult) int64 { return r.PeakConns })),
		},
		rounds:  len(rs),
		wallMin: slices.Min(walls),
		okMin:   slices.Min(collect(rs, func(r simResult) int { return r.OK })),
	}
}

// medianRate is the median of the rounds' nodes/s.
func medianRate(rs []simResult) float64 {
	return benchstat.Median(collect(rs, func(r simResult) float64 { return r.rate() }))
}
