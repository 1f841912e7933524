package kubeindex

import (
	"os"
	"testing"

	kubeenv "github.com/quell-ir/quell/internal/testenv/kube"
)

// env is the package's one apiserver (see kubeenv.Main); nil when the
// binaries are missing (the integration tests then skip).
var env *kubeenv.Env

// saToken authenticates as quell's ServiceAccount (deploy/kubernetes).
const saToken = "quell-sa-kubeindex-token-0123456789"

func TestMain(m *testing.M) {
	os.Exit(kubeenv.MainAsQuell(m, saToken, "../../../deploy/kubernetes/rbac.yaml", &env))
}
