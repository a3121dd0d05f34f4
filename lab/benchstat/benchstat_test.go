package benchstat

import (
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []int
		want int
	}{{nil, 0}, {[]int{5}, 5}, {[]int{9, 1, 5}, 5}, {[]int{4, 1, 3, 2}, 2}} {
		if got := Median(c.in); got != c.want {
			t.Errorf("Median(%v) = %d, want %d", c.in, got, c.want)
		}
	}
	in := []time.Duration{3 * time.Second, time.Second, 2 * time.Second, 4 * time.Second}
	if got := Median(in); got != 2500*time.Millisecond {
		t.Errorf("Median(%v) = %v, want 2.5s", in, got)
	}
	if in[0] != 3*time.Second {
		t.Error("Median sorted its input in place")
	}
}
