package sshclient

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestTailBufferKeepsTheTail(t *testing.T) {
	for _, tc := range []struct {
		name    string
		size    int
		limit   int
		dropped bool
	}{
		{"empty", 0, 16, false},
		{"small", 10, 16, false},
		{"exact", 16, 16, false},
		{"over", 17, 16, true},
		{"much more", 10_000, 16, true},
		{"large limit", 300_000, 64 << 10, true},
	} {
		data := []byte(strings.Repeat("0123456789abcdefghij", tc.size/20+1)[:tc.size])
		want := data[max(0, len(data)-tc.limit):]
		for _, via := range []string{"io.Copy", "one byte reads", "Write"} {
			tb := &tailBuffer{limit: tc.limit}
			var err error
			switch via {
			case "io.Copy":
				_, err = io.Copy(tb, bytes.NewReader(data))
			case "one byte reads":
				_, err = io.Copy(tb, iotest.OneByteReader(bytes.NewReader(data)))
			case "Write":
				for i := 0; i < len(data); i += 7 {
					tb.Write(data[i:min(i+7, len(data))])
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := tb.Bytes(); !bytes.Equal(got, want) || tb.dropped != tc.dropped {
				t.Errorf("%s via %s: %d bytes dropped=%v, want %d dropped=%v", tc.name, via, len(got), tb.dropped, len(want), tc.dropped)
			}
		}
	}
}
