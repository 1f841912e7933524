package kube

import (
	"os"
	"testing"

	kubeenv "github.com/quell-ir/quell/internal/testenv/kube"
)

// env is the package's one apiserver (see kubeenv.Main).
var env *kubeenv.Env

// saToken authenticates as quell's ServiceAccount (deploy/kubernetes).
const saToken = "quell-sa-test-token-0123456789"

func TestMain(m *testing.M) {
	os.Exit(kubeenv.MainAsQuell(m, saToken, "../../../deploy/kubernetes/rbac.yaml", &env))
}
