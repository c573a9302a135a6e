{{/* Return the chart name (nameOverride or the chart's name), at most 63 characters. */}}
{{- define "zhinao-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Return the full name of the release's objects: `<release>-zhinao-operator` unless overridden. */}}
{{- define "zhinao-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "zhinao-operator.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Return the labels that select the operator pod. */}}
{{- define "zhinao-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "zhinao-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Return the labels of every object. */}}
{{- define "zhinao-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "zhinao-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: zhinao-k8s
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Return the ServiceAccount name. */}}
{{- define "zhinao-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "zhinao-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Return the operator image reference (digest wins over tag; tag defaults to appVersion). */}}
{{- define "zhinao-operator.image" -}}
{{- $repo := .Values.image.repository }}
{{- if .Values.image.registry }}{{ $repo = printf "%s/%s" .Values.image.registry $repo }}{{ end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Fail on values the schema cannot express. */}}
{{- define "zhinao-operator.validateConfig" -}}
{{- if and .Values.metrics.serviceMonitor.enabled .Values.metrics.podMonitor.enabled }}
{{- fail "enable metrics.serviceMonitor or metrics.podMonitor, not both (the operator would be scraped twice)" }}
{{- end }}
{{- if and (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) .Values.rbac.create }}
{{- fail "rbac.create needs a ServiceAccount: set serviceAccount.create=true or serviceAccount.name" }}
{{- end }}
{{- end }}

{{/* The rules the operator needs, and nothing more. */}}
{{- define "zhinao-operator.rules" -}}
# Its own resources: watch them, add/remove its finalizer and progress annotations; an
# Ablation's runs are TrainingPipelines it creates (the garbage collector deletes them with it).
- apiGroups: ["zhinao.ai"]
  resources: ["trainingpipelines"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["zhinao.ai"]
  resources: ["ablations"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["zhinao.ai"]
  resources: ["trainingpipelines/status", "ablations/status"]
  verbs: ["get", "patch"]
# Its children's ownerReferences set blockOwnerDeletion, which the OwnerReferencesPermissionEnforcement
# admission plugin (OpenShift and others) allows only with `update` on the owner's finalizers.
- apiGroups: ["zhinao.ai"]
  resources: ["trainingpipelines/finalizers", "ablations/finalizers"]
  verbs: ["update"]
# The children: one PyTorchJob per stage, and an Ablation's prepare and evaluate jobs.
- apiGroups: ["kubeflow.org"]
  resources: ["pytorchjobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Before a GPU stage starts, its memory plan runs in a CPU-only Job (delete: a stale plan is
# replaced); the verdict is the termination message of that Job's pod, read from the pod list.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# Each stage's spec, mounted into its pods (patch: a retry's spec may have changed).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "patch"]
# What it reports on the pipelines (kopf posts Events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
