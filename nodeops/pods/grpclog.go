package pods

import (
	"io"
	"os"

	"google.golang.org/grpc/grpclog"
)

// gRPC logs a dozen INFO lines for every connection it makes (channel
// created, resolver updated, subchannel connecting, ready, closing...).
// Its default logger discards INFO and WARNING unless
// GRPC_GO_LOG_SEVERITY_LEVEL asks for them, but formats each line first:
// over a run of thousands of nodes, one gRPC connection each, that was
// about 6% of the client's allocations in the pods benchmark, for nothing
// printed. quietLogger prints exactly what the default prints (ERROR and
// FATAL, to stderr) and drops the rest before formatting. It is installed
// only when none of gRPC's (or the etcd client's) logging variables is set,
// so that asking for gRPC's logs still gets them from gRPC's own logger.
func init() {
	for _, v := range []string{"GRPC_GO_LOG_SEVERITY_LEVEL", "GRPC_GO_LOG_VERBOSITY_LEVEL", "GRPC_GO_LOG_FORMATTER", "ETCD_CLIENT_DEBUG"} {
		if os.Getenv(v) != "" {
			return
		}
	}
	grpclog.SetLoggerV2(quietLogger{grpclog.NewLoggerV2(io.Discard, io.Discard, os.Stderr)})
}

var _ grpclog.DepthLoggerV2 = quietLogger{}

// quietLogger is gRPC's default logger without its INFO and WARNING
// lines, which the default discards after formatting them.
type quietLogger struct{ grpclog.LoggerV2 }

func (quietLogger) Info(...any)             {}
func (quietLogger) Infoln(...any)           {}
func (quietLogger) Infof(string, ...any)    {}
func (quietLogger) Warning(...any)          {}
func (quietLogger) Warningln(...any)        {}
func (quietLogger) Warningf(string, ...any) {}

// V reports no verbosity: gRPC asks before building some of its INFO
// lines (the resolver's state as JSON, for every connection), which are
// dropped anyway.
func (quietLogger) V(int) bool { return false }

// The depth variants are what gRPC's components call (grpclog.InfoDepth
// prefers them when the logger has them).

func (quietLogger) InfoDepth(int, ...any)    {}
func (quietLogger) WarningDepth(int, ...any) {}

// As grpclog.ErrorDepth and FatalDepth print with a logger that has no
// depth variants.
func (l quietLogger) ErrorDepth(_ int, args ...any) { l.Errorln(args...) }
func (l quietLogger) FatalDepth(_ int, args ...any) { l.Fatalln(args...) }
