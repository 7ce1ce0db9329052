// Package kubernetes_test renders the Kustomize base with Kustomize's own
// library (the same kustomize/api version as the kustomize binary that
// `make k8s-render` installs), decodes every object strictly into its
// Kubernetes API type (an unknown or duplicate field fails), checks the
// properties deploy/README.md promises, and loads the alerting rules with
// Prometheus' rule parser.
package kubernetes_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// rendered is the base, rendered and strictly decoded.
type rendered struct {
	deployment  *appsv1.Deployment
	job         *batchv1.Job
	service     *corev1.Service
	pdb         *policyv1.PodDisruptionBudget
	netpol      *networkingv1.NetworkPolicy
	rule        *monitoringv1.PrometheusRule
	podMonitor  *monitoringv1.PodMonitor
	sa          *corev1.ServiceAccount
	configMaps  map[string]*corev1.ConfigMap
	objectCount int
}

// decodeStrict decodes one rendered object into the Go type for its
// apiVersion and kind; an object of any other kind fails.
func decodeStrict(t *testing.T, r *rendered, doc []byte) {
	t.Helper()
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal(doc, &meta); err != nil {
		t.Fatalf("rendered object: %v\n%s", err, doc)
	}
	var obj any
	switch meta.APIVersion + " " + meta.Kind {
	case "apps/v1 Deployment":
		if r.deployment != nil {
			t.Fatal("more than one Deployment")
		}
		r.deployment = &appsv1.Deployment{}
		obj = r.deployment
	case "batch/v1 Job":
		r.job = &batchv1.Job{}
		obj = r.job
	case "v1 Service":
		r.service = &corev1.Service{}
		obj = r.service
	case "v1 ServiceAccount":
		r.sa = &corev1.ServiceAccount{}
		obj = r.sa
	case "v1 ConfigMap":
		cm := &corev1.ConfigMap{}
		r.configMaps[meta.Metadata.Name] = cm
		obj = cm
	case "policy/v1 PodDisruptionBudget":
		r.pdb = &policyv1.PodDisruptionBudget{}
		obj = r.pdb
	case "networking.k8s.io/v1 NetworkPolicy":
		r.netpol = &networkingv1.NetworkPolicy{}
		obj = r.netpol
	case "monitoring.coreos.com/v1 PrometheusRule":
		r.rule = &monitoringv1.PrometheusRule{}
		obj = r.rule
	case "monitoring.coreos.com/v1 PodMonitor":
		r.podMonitor = &monitoringv1.PodMonitor{}
		obj = r.podMonitor
	default:
		t.Fatalf("rendered an object of unexpected type %s %s (%s); add it to decodeStrict", meta.APIVersion, meta.Kind, meta.Metadata.Name)
	}
	if err := strictDecode(doc, obj); err != nil {
		t.Fatalf("%s %s does not decode strictly into its API type: %v", meta.Kind, meta.Metadata.Name, err)
	}
	r.objectCount++
}

// strictDecode decodes YAML as the Kubernetes API server decodes a
// request with fieldValidation=Strict: YAML to JSON refusing duplicate
// keys, then case-sensitive JSON refusing unknown and duplicate fields.
// (encoding/json alone matches field names case-insensitively, so it would
// accept "readOnlyRootFileSystem".)
func strictDecode(doc []byte, obj any) error {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strictErrs, err := kjson.UnmarshalStrict(j, obj, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

func render(t *testing.T) *rendered {
	t.Helper()
	dir, err := filepath.Abs("base")
	if err != nil {
		t.Fatal(err)
	}
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build: %v", err)
	}
	r := &rendered{configMaps: map[string]*corev1.ConfigMap{}}
	for _, res := range m.Resources() {
		doc, err := res.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		decodeStrict(t, r, doc)
	}
	for what, missing := range map[string]bool{
		"Deployment": r.deployment == nil, "migration Job": r.job == nil, "Service": r.service == nil,
		"PodDisruptionBudget": r.pdb == nil, "NetworkPolicy": r.netpol == nil, "PrometheusRule": r.rule == nil,
		"PodMonitor": r.podMonitor == nil, "ServiceAccount": r.sa == nil,
	} {
		if missing {
			t.Fatalf("the base renders no %s", what)
		}
	}
	return r
}

// TestStrictDecode renders the base and decodes every object strictly.
func TestStrictDecode(t *testing.T) {
	r := render(t)
	t.Logf("%d objects decoded strictly", r.objectCount)
	// Strictness itself: a misspelt field must fail, or the test proves nothing.
	for _, bad := range []struct {
		doc string
		obj any
	}{
		{"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replica: 3}\n", &appsv1.Deployment{}},
		{"apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: c, securityContext: {readOnlyRootFileSystem: true}}]}\n", &corev1.Pod{}},
		{"apiVersion: v1\nkind: Pod\nmetadata: {name: x, name: y}\n", &corev1.Pod{}},
	} {
		if err := strictDecode([]byte(bad.doc), bad.obj); err == nil {
			t.Errorf("strict decoding accepted %q", bad.doc)
		}
	}
	good := "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: c, securityContext: {readOnlyRootFilesystem: true}}]}\n"
	if err := strictDecode([]byte(good), &corev1.Pod{}); err != nil {
		t.Errorf("strict decoding refused a valid Pod: %v", err)
	}
}

func selects(t *testing.T, sel *metav1.LabelSelector, podLabels map[string]string) bool {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatal(err)
	}
	return !s.Empty() && s.Matches(labels.Set(podLabels))
}

func env(c corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

func containerPort(t *testing.T, c corev1.Container, name string) int32 {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	t.Fatalf("container %s has no port named %q", c.Name, name)
	return 0
}

// mountFor returns the volume mount that holds path and its volume.
func mountFor(t *testing.T, spec corev1.PodSpec, c corev1.Container, path string) (corev1.VolumeMount, corev1.Volume) {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if strings.HasPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/") {
			for _, v := range spec.Volumes {
				if v.Name == m.Name {
					return m, v
				}
			}
			t.Fatalf("mount %s names no volume", m.Name)
		}
	}
	t.Fatalf("container %s: %s is not on any volume", c.Name, path)
	return corev1.VolumeMount{}, corev1.Volume{}
}

// secretFile checks that setting names a file on a read-only Secret volume
// and returns the Secret's name and key.
func secretFile(t *testing.T, spec corev1.PodSpec, c corev1.Container, setting string) (string, string) {
	t.Helper()
	path, ok := env(c, setting)
	if !ok || path == "" {
		t.Fatalf("container %s does not set %s", c.Name, setting)
	}
	m, v := mountFor(t, spec, c, path)
	if v.Secret == nil || !m.ReadOnly {
		t.Fatalf("%s=%s is not on a read-only Secret volume", setting, path)
	}
	file := strings.TrimPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/")
	for _, it := range v.Secret.Items {
		if it.Path == file {
			if v.Secret.DefaultMode == nil || *v.Secret.DefaultMode&0o007 != 0 {
				t.Errorf("Secret volume %s readable by others (defaultMode %v)", v.Name, v.Secret.DefaultMode)
			}
			return v.Secret.SecretName, it.Key
		}
	}
	t.Fatalf("%s=%s: Secret volume %s has no item %s", setting, path, v.Name, file)
	return "", ""
}

// checkPodHardening applies the pod security list to a pod template.
func checkPodHardening(t *testing.T, what string, spec corev1.PodSpec) {
	t.Helper()
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Errorf("%s: pod securityContext.runAsNonRoot is not true", what)
	}
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod seccompProfile is not RuntimeDefault", what)
	}
	if psc != nil && psc.RunAsUser != nil && *psc.RunAsUser == 0 {
		t.Errorf("%s: pod runs as uid 0", what)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("%s: mounts a service account token", what)
	}
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
		t.Errorf("%s: shares a host namespace", what)
	}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			t.Errorf("%s: hostPath volume %s", what, v.Name)
		}
	}
	all := append(slices.Clone(spec.InitContainers), spec.Containers...)
	for _, c := range all {
		sc := c.SecurityContext
		name := what + "/" + c.Name
		if sc == nil {
			t.Errorf("%s: no securityContext", name)
			continue
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("%s: allowPrivilegeEscalation is not false", name)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("%s: readOnlyRootFilesystem is not true", name)
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Errorf("%s: privileged", name)
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
			t.Errorf("%s: capabilities must drop ALL and add none", name)
		}
		if sc.RunAsNonRoot != nil && !*sc.RunAsNonRoot || sc.RunAsUser != nil && *sc.RunAsUser == 0 {
			t.Errorf("%s: may run as root", name)
		}
		if sc.SeccompProfile != nil && sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: seccompProfile %s", name, sc.SeccompProfile.Type)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
			t.Errorf("%s: no CPU and memory requests", name)
		}
		if c.Resources.Limits.Memory().IsZero() {
			t.Errorf("%s: no memory limit", name)
		}
		for _, e := range c.Env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				t.Errorf("%s: secret %s in the environment; secrets are mounted as files", name, e.Name)
			}
			if e.Name == "PSTD_DATABASE_URL" || e.Name == "PSTD_PKCS11_PIN" || e.Name == "PSTD_PKCS11_URI" {
				t.Errorf("%s: %s set in the environment; use the _FILE setting", name, e.Name)
			}
		}
		for _, ef := range c.EnvFrom {
			if ef.SecretRef != nil {
				t.Errorf("%s: envFrom a Secret", name)
			}
		}
	}
}

func TestDeployment(t *testing.T) {
	r := render(t)
	d := r.deployment
	spec := d.Spec.Template.Spec
	podLabels := d.Spec.Template.Labels
	checkPodHardening(t, "Deployment", spec)

	if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
		t.Errorf("replicas %v, want 3", d.Spec.Replicas)
	}
	replicas := int(*d.Spec.Replicas)
	ru := d.Spec.Strategy.RollingUpdate
	if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType || ru == nil || ru.MaxUnavailable == nil {
		t.Fatal("no RollingUpdate strategy with maxUnavailable")
	}
	unavail, err := intstr.GetScaledValueFromIntOrPercent(ru.MaxUnavailable, replicas, false)
	if err != nil {
		t.Fatal(err)
	}
	if replicas-unavail < 2 {
		t.Errorf("a rollout may leave %d replicas, want at least 2", replicas-unavail)
	}
	surge, err := intstr.GetScaledValueFromIntOrPercent(ru.MaxSurge, replicas, true)
	if err != nil || surge < 1 {
		t.Errorf("maxSurge %v: a rollout with maxUnavailable alone would stall at the PDB", ru.MaxSurge)
	}

	// Topology spread over nodes, selecting these pods.
	var hostSpread bool
	for _, c := range spec.TopologySpreadConstraints {
		if !selects(t, c.LabelSelector, podLabels) {
			t.Errorf("topology spread on %s does not select the pods", c.TopologyKey)
		}
		if c.TopologyKey == "kubernetes.io/hostname" && c.WhenUnsatisfiable == corev1.DoNotSchedule && c.MaxSkew == 1 {
			hostSpread = true
		}
	}
	if !hostSpread {
		t.Error("no hard topology spread over kubernetes.io/hostname")
	}

	// PDB keeps two.
	if r.pdb.Spec.MinAvailable == nil || r.pdb.Spec.MinAvailable.IntValue() < 2 {
		t.Errorf("PDB minAvailable %v, want 2", r.pdb.Spec.MinAvailable)
	}
	if !selects(t, r.pdb.Spec.Selector, podLabels) {
		t.Error("PDB does not select the issuer pods")
	}
	if selects(t, r.pdb.Spec.Selector, r.job.Spec.Template.Labels) {
		t.Error("PDB selects the migration Job's pods")
	}

	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	if !strings.HasPrefix(c.Image, "localhost/pstd:") {
		t.Errorf("image %q, want localhost/pstd:TAG (set by kustomization images)", c.Image)
	}
	if !slices.Equal(c.Args, []string{"serve"}) {
		t.Errorf("args %q, want [serve]", c.Args)
	}
	httpPort, adminPort := containerPort(t, c, "http"), containerPort(t, c, "admin")
	for setting, port := range map[string]int32{"PSTD_LISTEN": httpPort, "PSTD_ADMIN_LISTEN": adminPort} {
		v, _ := env(c, setting)
		_, p, err := net.SplitHostPort(v)
		if err != nil || p != fmt.Sprint(port) {
			t.Errorf("%s=%q does not listen on container port %d", setting, v, port)
		}
	}
	if v, _ := env(c, "PSTD_MIGRATE"); v != "false" {
		t.Errorf("PSTD_MIGRATE=%q: replicas must not migrate (the Job does)", v)
	}

	// Probes on the admin port.
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		want := map[string]string{"readiness": "/readyz", "liveness": "/healthz"}[name]
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != want || p.HTTPGet.Port.String() != "admin" {
			t.Errorf("%s probe: want GET %s on the admin port, have %+v", name, want, p)
		}
	}

	// Secrets as files; the module from a read-only, non-Secret volume.
	if s, k := secretFile(t, spec, c, "PSTD_DATABASE_URL_FILE"); s != "pstd-database" || k != "database-url" {
		t.Errorf("database URL from Secret %s key %s", s, k)
	}
	if s, k := secretFile(t, spec, c, "PSTD_PKCS11_PIN_FILE"); s != "pstd-pkcs11" || k != "pin" {
		t.Errorf("PIN from Secret %s key %s", s, k)
	}
	module, _ := env(c, "PSTD_PKCS11_MODULE")
	m, v := mountFor(t, spec, c, module)
	if !m.ReadOnly || v.Secret != nil || v.ConfigMap != nil || v.EmptyDir != nil {
		t.Errorf("PKCS#11 module %s: want a read-only volume holding the vendor module, have %+v", module, v.VolumeSource)
	}
	if v.PersistentVolumeClaim != nil && !v.PersistentVolumeClaim.ReadOnly {
		t.Error("PKCS#11 module claim is not read-only")
	}

	// Settings from the ConfigMap name only real settings, and no secrets.
	cm, ok := r.configMaps[c.EnvFrom[0].ConfigMapRef.Name]
	if !ok {
		t.Fatalf("envFrom ConfigMap %s is not rendered", c.EnvFrom[0].ConfigMapRef.Name)
	}
	for k := range cm.Data {
		if !strings.HasPrefix(k, "PSTD_") || k == "PSTD_DATABASE_URL" || k == "PSTD_PKCS11_PIN" || k == "PSTD_PKCS11_URI" {
			t.Errorf("ConfigMap %s sets %s", cm.Name, k)
		}
	}

	// Service: public port only, to these pods.
	if !labels.SelectorFromSet(r.service.Spec.Selector).Matches(labels.Set(podLabels)) || len(r.service.Spec.Selector) == 0 {
		t.Error("Service does not select the issuer pods")
	}
	if labels.SelectorFromSet(r.service.Spec.Selector).Matches(labels.Set(r.job.Spec.Template.Labels)) {
		t.Error("Service selects the migration Job's pods")
	}
	for _, p := range r.service.Spec.Ports {
		if p.TargetPort.String() != "http" {
			t.Errorf("Service exposes port %s; only the public port belongs there", p.TargetPort.String())
		}
	}
	if r.podMonitor.Spec.PodMetricsEndpoints[0].Port == nil || *r.podMonitor.Spec.PodMetricsEndpoints[0].Port != "admin" {
		t.Error("PodMonitor does not scrape the admin port")
	}
	if r.sa.AutomountServiceAccountToken == nil || *r.sa.AutomountServiceAccountToken {
		t.Error("ServiceAccount automounts its token")
	}
}

func TestMigrationJob(t *testing.T) {
	r := render(t)
	j := r.job
	spec := j.Spec.Template.Spec
	checkPodHardening(t, "Job", spec)
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers", len(spec.Containers))
	}
	c := spec.Containers[0]
	if !slices.Equal(c.Args, []string{"migrate"}) {
		t.Errorf("args %q, want [migrate]", c.Args)
	}
	if c.Image != r.deployment.Spec.Template.Spec.Containers[0].Image {
		t.Errorf("Job image %s differs from the Deployment's", c.Image)
	}
	if spec.RestartPolicy != corev1.RestartPolicyNever && spec.RestartPolicy != corev1.RestartPolicyOnFailure {
		t.Errorf("restartPolicy %s", spec.RestartPolicy)
	}
	if s, k := secretFile(t, spec, c, "PSTD_DATABASE_URL_FILE"); s != "pstd-database" || k != "database-url" {
		t.Errorf("database URL from Secret %s key %s", s, k)
	}
	// Migrations need no HSM: no PIN is mounted into the Job.
	for _, v := range spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == "pstd-pkcs11" {
			t.Error("the migration Job mounts the PKCS#11 PIN")
		}
	}
	if j.Spec.BackoffLimit == nil || *j.Spec.BackoffLimit > 5 {
		t.Errorf("backoffLimit %v", j.Spec.BackoffLimit)
	}
}

func TestNetworkPolicy(t *testing.T) {
	r := render(t)
	np := r.netpol
	sel := &np.Spec.PodSelector
	if !selects(t, sel, r.deployment.Spec.Template.Labels) || !selects(t, sel, r.job.Spec.Template.Labels) {
		t.Fatal("NetworkPolicy does not select both the issuer and the migration pods")
	}
	if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) || !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
		t.Fatalf("policyTypes %v, want Ingress and Egress", np.Spec.PolicyTypes)
	}
	ports := map[string]bool{}
	for _, rule := range np.Spec.Ingress {
		if len(rule.Ports) != 1 || rule.Ports[0].Port == nil {
			t.Fatalf("ingress rule %+v: want exactly one named port", rule)
		}
		p := rule.Ports[0].Port.String()
		ports[p] = true
		switch p {
		case "http":
			if len(rule.From) != 0 {
				t.Errorf("public port restricted to %+v; it must be open to anyone", rule.From)
			}
		case "admin":
			if len(rule.From) != 1 || rule.From[0].PodSelector != nil || rule.From[0].IPBlock != nil || rule.From[0].NamespaceSelector == nil ||
				rule.From[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "monitoring" || len(rule.From[0].NamespaceSelector.MatchLabels) != 1 {
				t.Errorf("admin port open to %+v; want the monitoring namespace only", rule.From)
			}
		default:
			t.Errorf("ingress to unexpected port %s", p)
		}
	}
	if !ports["http"] || !ports["admin"] {
		t.Errorf("ingress ports %v, want http and admin", ports)
	}
	// Egress: every rule names peers and ports (no open rule), and none is
	// the whole internet.
	var dests []string
	for _, rule := range np.Spec.Egress {
		if len(rule.To) == 0 || len(rule.Ports) == 0 {
			t.Errorf("egress rule %+v allows every destination or port", rule)
		}
		for _, to := range rule.To {
			if to.IPBlock != nil {
				_, n, err := net.ParseCIDR(to.IPBlock.CIDR)
				if err != nil {
					t.Errorf("egress CIDR %q: %v", to.IPBlock.CIDR, err)
				} else if ones, _ := n.Mask.Size(); ones < 8 {
					t.Errorf("egress to %s is far too wide", to.IPBlock.CIDR)
				}
				dests = append(dests, to.IPBlock.CIDR)
			}
		}
		for _, p := range rule.Ports {
			dests = append(dests, p.Port.String())
		}
	}
	if len(np.Spec.Egress) != 3 || !slices.Contains(dests, "5432") {
		t.Errorf("egress %v: want PostgreSQL, the HSM and cluster DNS", dests)
	}
}

// metricsInREADME returns the pstd_* metric names README.md documents, and
// those its "Metrics worth alerting on" table lists.
func metricsInREADME(t *testing.T) (documented, alertable map[string]bool) {
	t.Helper()
	f, err := os.Open("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	documented, alertable = map[string]bool{}, map[string]bool{}
	name := regexp.MustCompile("`(pstd_[a-z0-9_]+)")
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			in = strings.Contains(line, "Metrics worth alerting on")
			continue
		}
		for _, m := range name.FindAllStringSubmatch(line, -1) {
			documented[m[1]] = true
			if in && strings.HasPrefix(line, "|") {
				alertable[m[1]] = true
			}
		}
	}
	if len(alertable) < 5 {
		t.Fatalf("found only %d metrics in README's alert table", len(alertable))
	}
	return documented, alertable
}

// metricNames returns the metric names an expression selects, without
// histogram suffixes.
func metricNames(expr parser.Expr) []string {
	var out []string
	parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			name := vs.Name
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				name = strings.TrimSuffix(name, suf)
			}
			out = append(out, name)
		}
		return nil
	})
	return out
}

func TestPrometheusRules(t *testing.T) {
	r := render(t)
	// The PrometheusRule's spec is a Prometheus rule file; load it with
	// Prometheus' own parser, unknown fields refused, expressions checked.
	b, err := yaml.Marshal(r.rule.Spec)
	if err != nil {
		t.Fatal(err)
	}
	p := parser.NewParser(parser.Options{})
	groups, errs := rulefmt.Parse(b, false, model.UTF8Validation, p, slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		t.Fatalf("Prometheus refuses the rules: %v", errs)
	}
	documented, alertable := metricsInREADME(t)
	used := map[string]bool{}
	var alerts []string
	for _, g := range groups.Groups {
		for _, rule := range g.Rules {
			if rule.Alert == "" {
				continue
			}
			alerts = append(alerts, rule.Alert)
			if rule.Labels["severity"] == "" || rule.Annotations["summary"] == "" {
				t.Errorf("alert %s lacks a severity label or a summary", rule.Alert)
			}
			expr, err := p.ParseExpr(rule.Expr)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range metricNames(expr) {
				if !documented[m] {
					t.Errorf("alert %s uses %s, which README.md does not document", rule.Alert, m)
				}
				used[m] = true
			}
		}
	}
	if len(alerts) < 5 {
		t.Errorf("%d alerts, want at least 5", len(alerts))
	}
	var missing []string
	for m := range alertable {
		if !used[m] {
			missing = append(missing, m)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("README lists %v as worth alerting on, but no alert uses them", missing)
	}
	t.Logf("%d alerts: %s", len(alerts), strings.Join(alerts, ", "))
}

func TestGrafanaDashboard(t *testing.T) {
	r := render(t)
	cm, ok := r.configMaps["pstd-dashboard"]
	if !ok {
		t.Fatal("no pstd-dashboard ConfigMap")
	}
	if cm.Labels["grafana_dashboard"] != "1" {
		t.Error("dashboard ConfigMap lacks the grafana_dashboard label Grafana's sidecar looks for")
	}
	var d struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			ID      int    `json:"id"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	dec := json.NewDecoder(strings.NewReader(cm.Data["pstd.json"]))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	if d.UID == "" || d.Title == "" || len(d.Panels) < 5 {
		t.Fatalf("dashboard %q (uid %q) with %d panels", d.Title, d.UID, len(d.Panels))
	}
	documented, _ := metricsInREADME(t)
	// Grafana's variables, replaced by what Grafana would put there.
	vars := strings.NewReplacer("$__rate_interval", "5m", "$namespace", "pstd")
	p := parser.NewParser(parser.Options{})
	ids := map[int]bool{}
	for _, panel := range d.Panels {
		if ids[panel.ID] {
			t.Errorf("panel id %d used twice", panel.ID)
		}
		ids[panel.ID] = true
		if len(panel.Targets) == 0 {
			t.Errorf("panel %q has no query", panel.Title)
		}
		for _, tg := range panel.Targets {
			expr, err := p.ParseExpr(vars.Replace(tg.Expr))
			if err != nil {
				t.Errorf("panel %q: %q: %v", panel.Title, tg.Expr, err)
				continue
			}
			for _, m := range metricNames(expr) {
				if !documented[m] {
					t.Errorf("panel %q uses %s, which README.md does not document", panel.Title, m)
				}
			}
		}
	}
}

// pendingSettings are settings the manifests use that pstd is gaining
// (issue 14) and README.md's configuration table does not list yet. Once
// the table lists them, this set can go.
var pendingSettings = map[string]bool{
	"PSTD_ADMIN_LISTEN": true, "PSTD_SHUTDOWN_DELAY": true, "PSTD_DATABASE_URL_FILE": true,
}

// TestSettingsAreKnown catches a misspelt setting in the manifests, which
// pstd would only warn about.
func TestSettingsAreKnown(t *testing.T) {
	r := render(t)
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	name := regexp.MustCompile("`((?:PSTD|SOFTHSM2)_[A-Z0-9_]+)`")
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "| `PSTD_") {
			for _, m := range name.FindAllStringSubmatch(strings.SplitN(line, "|", 3)[1], -1) {
				known[m[1]] = true
			}
		}
	}
	if len(known) < 10 {
		t.Fatalf("found only %d settings in README.md's configuration table", len(known))
	}
	var used []string
	for _, spec := range []corev1.PodSpec{r.deployment.Spec.Template.Spec, r.job.Spec.Template.Spec} {
		for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
			for _, e := range c.Env {
				if strings.HasPrefix(e.Name, "PSTD_") {
					used = append(used, e.Name)
				}
			}
		}
	}
	cmName := r.deployment.Spec.Template.Spec.Containers[0].EnvFrom[0].ConfigMapRef.Name
	cm, ok := r.configMaps[cmName]
	if !ok {
		t.Fatalf("ConfigMap %s not rendered", cmName)
	}
	for k := range cm.Data {
		used = append(used, k)
	}
	for _, n := range used {
		if !known[n] && !pendingSettings[n] {
			t.Errorf("the manifests set %s, which is no setting in README.md's configuration table", n)
		}
	}
}
