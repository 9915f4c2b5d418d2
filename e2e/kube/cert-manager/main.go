// cert-manager-controller: the upstream cert-manager controllers the e2e host plane needs,
// started from the pinned module's own packages. The upstream command (cmd/controller) is a
// module of its own that the Go module proxy does not serve, so this small main takes its
// place: it builds the controllers' shared context exactly as the library expects and runs
// the ones named by --controllers (ingress-shim, the certificate lifecycle, the CA issuer).
// No leader election (one instance), no webhook (the CRDs' schemas validate), no ACME.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	controllerpkg "github.com/cert-manager/cert-manager/pkg/controller"
	logf "github.com/cert-manager/cert-manager/pkg/logs"
	"k8s.io/klog/v2"

	// Each of these registers its controller (or issuer type) in an init function.
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificate-shim/ingresses"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

const defaultControllers = "issuers,clusterissuers,ingress-shim," +
	"certificates-trigger,certificates-key-manager,certificates-request-manager," +
	"certificates-issuing,certificates-readiness,certificates-revision-manager," +
	"certificaterequests-approver,certificaterequests-issuer-ca,certificaterequests-issuer-selfsigned"

func main() {
	klog.InitFlags(nil)
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the cluster to manage")
	clusterNS := flag.String("cluster-resource-namespace", "cert-manager", "namespace of the Secrets ClusterIssuers reference")
	names := flag.String("controllers", defaultControllers, "comma-separated controllers to run")
	workers := flag.Int("workers", 2, "workers per controller")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx = logf.NewContext(ctx, logf.Log)
	if err := run(ctx, *kubeconfig, *clusterNS, *names, *workers); err != nil {
		fmt.Fprintln(os.Stderr, "cert-manager-controller:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, kubeconfig, clusterNS, names string, workers int) error {
	opts := controllerpkg.ContextOptions{
		Kubeconfig:         kubeconfig,
		KubernetesAPIQPS:   50,
		KubernetesAPIBurst: 100,
		IssuerOptions:      controllerpkg.IssuerOptions{ClusterResourceNamespace: clusterNS},
		IngressShimOptions: controllerpkg.IngressShimOptions{
			DefaultIssuerKind:                 "Issuer",
			DefaultIssuerGroup:                "cert-manager.io",
			DefaultAutoCertificateAnnotations: []string{"kubernetes.io/tls-acme"},
		},
		CertificateOptions: controllerpkg.CertificateOptions{
			CertificateRequestMinimumBackoffDuration: 10 * time.Second,
			CertificateRequestMaximumBackoffDuration: time.Minute,
		},
		SchedulerOptions: controllerpkg.SchedulerOptions{MaxConcurrentChallenges: 60},
	}
	factory, err := controllerpkg.NewContextFactory(ctx, opts)
	if err != nil {
		return err
	}
	known := controllerpkg.Known()
	var run []controllerpkg.Interface
	for _, name := range strings.Split(names, ",") {
		ctor, ok := known[strings.TrimSpace(name)]
		if !ok {
			var all []string
			for n := range known {
				all = append(all, n)
			}
			sort.Strings(all)
			return fmt.Errorf("unknown controller %q (known: %s)", name, strings.Join(all, ", "))
		}
		c, err := ctor(factory)
		if err != nil {
			return fmt.Errorf("controller %s: %w", name, err)
		}
		run = append(run, c)
	}
	// The controllers asked the shared informer factories for their informers while being
	// built; start them once all are known.
	shared, err := factory.Build()
	if err != nil {
		return err
	}
	shared.KubeSharedInformerFactory.Start(ctx.Done())
	shared.SharedInformerFactory.Start(ctx.Done())
	shared.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())
	logf.Log.Info("starting controllers", "controllers", names)

	var wg sync.WaitGroup
	errs := make(chan error, len(run))
	for _, c := range run {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.Run(workers, ctx); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}
