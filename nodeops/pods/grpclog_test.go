package pods

import (
	"os"
	"testing"

	"google.golang.org/grpc/grpclog"
)

// TestQuietLogger: with none of gRPC's logging variables set, gRPC's
// verbose checks say no, so that it does not build INFO lines nobody
// prints.
func TestQuietLogger(t *testing.T) {
	for _, v := range []string{"GRPC_GO_LOG_SEVERITY_LEVEL", "GRPC_GO_LOG_VERBOSITY_LEVEL", "GRPC_GO_LOG_FORMATTER", "ETCD_CLIENT_DEBUG"} {
		if os.Getenv(v) != "" {
			t.Skipf("%s is set: gRPC's own logger is in use", v)
		}
	}
	if grpclog.V(0) {
		t.Error("grpclog.V(0) is true: gRPC formats its INFO lines")
	}
}
