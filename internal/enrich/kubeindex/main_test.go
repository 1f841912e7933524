package kubeindex

import (
	"context"
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
	opts := kubeenv.Options{Users: []kubeenv.User{kubeenv.ServiceAccountUser("quell-system", "quell", saToken)}}
	os.Exit(kubeenv.Main(m, opts, func(ctx context.Context, e *kubeenv.Env) error {
		rbac, err := os.ReadFile("../../../deploy/kubernetes/rbac.yaml")
		if err != nil {
			return err
		}
		if err := kubeenv.Apply(ctx, e.AdminConfig(), "quell-test", rbac); err != nil {
			return err
		}
		env = e
		return nil
	}))
}
