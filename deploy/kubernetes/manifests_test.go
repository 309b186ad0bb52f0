package kubernetes

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

type manifests struct {
	namespaces   []corev1.Namespace
	services     []corev1.Service
	configMaps   map[string]corev1.ConfigMap
	claims       map[string]corev1.PersistentVolumeClaim
	deployments  []appsv1.Deployment
	statefulSets []appsv1.StatefulSet
	ingresses    []networkingv1.Ingress
	budgets      []policyv1.PodDisruptionBudget
}

// strictDecode rejects unknown fields, so a typo in a manifest fails here
// rather than being silently ignored by the API server.
func strictDecode(t *testing.T, where string, doc []byte, v any) {
	t.Helper()
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", where, err)
	}
}

// document is one YAML document of the kustomization's resources.
type document struct {
	where string // file and position, for messages
	data  []byte
}

// documents reads every resource document (not kustomization.yaml).
func documents(t *testing.T) []document {
	var docs []document
	files, _ := filepath.Glob("*.yaml")
	for _, file := range files {
		if file == "kustomization.yaml" {
			continue
		}
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range strings.Split(string(data), "\n---") {
			if strings.TrimSpace(doc) != "" {
				docs = append(docs, document{file + " doc " + strconv.Itoa(i), []byte(doc)})
			}
		}
	}
	return docs
}

func load(t *testing.T) manifests {
	m := manifests{configMaps: map[string]corev1.ConfigMap{}, claims: map[string]corev1.PersistentVolumeClaim{}}
	for _, d := range documents(t) {
		doc := d.data
		var meta struct{ Kind string }
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("%s: %v", d.where, err)
		}
		where := d.where + " (" + meta.Kind + ")"
		switch meta.Kind {
		case "Namespace":
			var v corev1.Namespace
			strictDecode(t, where, doc, &v)
			m.namespaces = append(m.namespaces, v)
		case "Service":
			var v corev1.Service
			strictDecode(t, where, doc, &v)
			m.services = append(m.services, v)
		case "ConfigMap":
			var v corev1.ConfigMap
			strictDecode(t, where, doc, &v)
			m.configMaps[v.Name] = v
		case "PersistentVolumeClaim":
			var v corev1.PersistentVolumeClaim
			strictDecode(t, where, doc, &v)
			m.claims[v.Name] = v
		case "Deployment":
			var v appsv1.Deployment
			strictDecode(t, where, doc, &v)
			m.deployments = append(m.deployments, v)
		case "StatefulSet":
			var v appsv1.StatefulSet
			strictDecode(t, where, doc, &v)
			m.statefulSets = append(m.statefulSets, v)
		case "Ingress":
			var v networkingv1.Ingress
			strictDecode(t, where, doc, &v)
			m.ingresses = append(m.ingresses, v)
		case "PodDisruptionBudget":
			var v policyv1.PodDisruptionBudget
			strictDecode(t, where, doc, &v)
			m.budgets = append(m.budgets, v)
		default:
			t.Fatalf("%s: unexpected kind %q", where, meta.Kind)
		}
	}
	return m
}

// pods are the workloads' pod templates with their labels.
func (m manifests) pods() []corev1.PodTemplateSpec {
	var out []corev1.PodTemplateSpec
	for _, d := range m.deployments {
		out = append(out, d.Spec.Template)
	}
	for _, s := range m.statefulSets {
		out = append(out, s.Spec.Template)
	}
	return out
}

func matches(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return len(selector) > 0
}

func TestManifestsWiring(t *testing.T) {
	m := load(t)
	if len(m.namespaces) != 1 || m.namespaces[0].Name != "corral" {
		t.Fatalf("namespaces %v", m.namespaces)
	}
	// Workload selectors select their own pods.
	for _, d := range m.deployments {
		if !matches(d.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
			t.Errorf("deployment %s selector does not match its pods", d.Name)
		}
	}
	for _, s := range m.statefulSets {
		if !matches(s.Spec.Selector.MatchLabels, s.Spec.Template.Labels) {
			t.Errorf("statefulset %s selector does not match its pods", s.Name)
		}
	}
	// Every Service selects pods and targets a port they expose.
	servicePorts := map[string][]int32{}
	for _, svc := range m.services {
		var selected []corev1.PodTemplateSpec
		for _, p := range m.pods() {
			if matches(svc.Spec.Selector, p.Labels) {
				selected = append(selected, p)
			}
		}
		if len(selected) == 0 {
			t.Errorf("service %s selects no pods", svc.Name)
		}
		for _, sp := range svc.Spec.Ports {
			servicePorts[svc.Name] = append(servicePorts[svc.Name], sp.Port)
			found := false
			for _, p := range selected {
				for _, c := range p.Spec.Containers {
					for _, cp := range c.Ports {
						if (sp.TargetPort.Type == intstr.String && cp.Name == sp.TargetPort.StrVal) ||
							(sp.TargetPort.Type == intstr.Int && cp.ContainerPort == sp.TargetPort.IntVal) {
							found = true
						}
					}
				}
			}
			if !found {
				t.Errorf("service %s port %d targets %v, which no selected container exposes", svc.Name, sp.Port, sp.TargetPort)
			}
		}
	}
	// A LoadBalancer per Corral service.
	for _, name := range []string{"corral-controller", "corral-registry"} {
		if !slices.ContainsFunc(m.services, func(s corev1.Service) bool { return s.Name == name && s.Spec.Type == corev1.ServiceTypeLoadBalancer }) {
			t.Errorf("no LoadBalancer service %s", name)
		}
	}

	// etcd: 3 members, one per host, each with a volume.
	if len(m.statefulSets) != 1 {
		t.Fatalf("statefulsets %d", len(m.statefulSets))
	}
	etcd := m.statefulSets[0]
	if *etcd.Spec.Replicas != 3 || len(etcd.Spec.VolumeClaimTemplates) != 1 ||
		etcd.Spec.Template.Spec.Affinity == nil || len(etcd.Spec.Template.Spec.Affinity.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) == 0 {
		t.Errorf("etcd statefulset: replicas, PVC template and required anti-affinity expected")
	}
	for _, e := range etcd.Spec.Template.Spec.Containers[0].Env {
		if e.Name == "CORRAL_ETCD_INITIAL_CLUSTER" && strings.Count(e.Value, "=") != 3 {
			t.Errorf("initial cluster names %d members: %s", strings.Count(e.Value, "="), e.Value)
		}
	}

	// Corral: 2 pods, each a controller and a registry; the registries share an RWX claim; no memory limit.
	if len(m.deployments) != 1 {
		t.Fatalf("deployments %d", len(m.deployments))
	}
	d := m.deployments[0]
	if *d.Spec.Replicas != 2 {
		t.Errorf("corral replicas %d, want 2", *d.Spec.Replicas)
	}
	names := []string{}
	for _, c := range d.Spec.Template.Spec.Containers {
		names = append(names, c.Name)
		for _, ef := range c.EnvFrom {
			if _, ok := m.configMaps[ef.ConfigMapRef.Name]; !ok {
				t.Errorf("container %s reads missing ConfigMap %s", c.Name, ef.ConfigMapRef.Name)
			}
		}
		if c.Name == "registry" {
			if _, limited := c.Resources.Limits[corev1.ResourceMemory]; limited {
				t.Error("the registry container must have no memory limit")
			}
			if len(c.VolumeMounts) != 1 || c.VolumeMounts[0].MountPath != "/mnt/vol" {
				t.Errorf("registry mounts %v", c.VolumeMounts)
			}
		}
	}
	if !slices.Equal(names, []string{"controller", "registry"}) {
		t.Errorf("containers %v", names)
	}
	// Secure by default: auth on in both, secrets from a Secret the operator
	// creates (never a value in the manifests), replicas on different hosts,
	// a disruption budget for Corral and for etcd's quorum.
	for _, c := range d.Spec.Template.Spec.Containers {
		cm := m.configMaps[c.EnvFrom[0].ConfigMapRef.Name]
		if cm.Data["ANKA_ENABLE_AUTH"] != "true" {
			t.Errorf("container %s: auth is not on", c.Name)
		}
		secrets := map[string]bool{}
		for _, e := range c.Env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && e.ValueFrom.SecretKeyRef.Name == "corral-auth" &&
				(e.ValueFrom.SecretKeyRef.Optional == nil || !*e.ValueFrom.SecretKeyRef.Optional) {
				secrets[e.Name] = true
			}
		}
		if !secrets["ANKA_ROOT_TOKEN"] || !secrets["ANKA_REGISTRY_TOKEN_SECRET"] {
			t.Errorf("container %s: root token and registry token secret must come from the Secret corral-auth: %v", c.Name, c.Env)
		}
	}
	if a := d.Spec.Template.Spec.Affinity; a == nil || a.PodAntiAffinity == nil || len(a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) == 0 {
		t.Error("corral pods need required anti-affinity")
	}
	budgets := map[string]int{}
	for _, b := range m.budgets {
		for _, p := range m.pods() {
			if matches(b.Spec.Selector.MatchLabels, p.Labels) && b.Spec.MinAvailable != nil {
				budgets[p.Labels["app.kubernetes.io/name"]] = b.Spec.MinAvailable.IntValue()
			}
		}
	}
	if budgets["corral"] != 1 || budgets["etcd"] != 2 {
		t.Errorf("disruption budgets %v, want corral 1 and etcd 2 available", budgets)
	}
	vols := d.Spec.Template.Spec.Volumes
	if len(vols) != 1 || vols[0].PersistentVolumeClaim == nil {
		t.Fatalf("volumes %v", vols)
	}
	claim, ok := m.claims[vols[0].PersistentVolumeClaim.ClaimName]
	if !ok || !slices.Contains(claim.Spec.AccessModes, corev1.ReadWriteMany) {
		t.Errorf("registry claim %q must exist and be ReadWriteMany", vols[0].PersistentVolumeClaim.ClaimName)
	}

	// Ingress: unlimited body, no buffering, long timeouts; backends exist.
	if len(m.ingresses) != 1 {
		t.Fatalf("ingresses %d", len(m.ingresses))
	}
	ing := m.ingresses[0]
	for k, v := range map[string]string{
		"nginx.ingress.kubernetes.io/proxy-body-size":         "0",
		"nginx.ingress.kubernetes.io/proxy-request-buffering": "off",
		"nginx.ingress.kubernetes.io/proxy-buffering":         "off",
	} {
		if ing.Annotations[k] != v {
			t.Errorf("ingress annotation %s = %q, want %q", k, ing.Annotations[k], v)
		}
	}
	for _, k := range []string{"nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout"} {
		if secs, err := strconv.Atoi(ing.Annotations[k]); err != nil || secs < 600 {
			t.Errorf("ingress %s = %q: want a long timeout", k, ing.Annotations[k])
		}
	}
	for _, rule := range ing.Spec.Rules {
		for _, p := range rule.HTTP.Paths {
			b := p.Backend.Service
			if !slices.Contains(servicePorts[b.Name], b.Port.Number) {
				t.Errorf("ingress %s -> %s:%d: no such service port", rule.Host, b.Name, b.Port.Number)
			}
		}
	}
}
