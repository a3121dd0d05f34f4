// Package benchstat is what the benchmark programs (make bench) share to
// report their rounds fairly: every client runs the same rounds and is
// reported by its median, so that none is shown at its best round beside
// another's single run.
package benchstat

import "slices"

// Number is what a median is taken of.
type Number interface {
	~int | ~int64 | ~float64
}

// Median returns the middle value of xs (the mean of the two middle values
// when there is an even number of them), or 0 for none.
func Median[T Number](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
