{{/* Chart name, truncated to the 63 characters Kubernetes allows in names. */}}
{{- define "llmproxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release name when it already contains the chart name. */}}
{{- define "llmproxy.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "llmproxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llmproxy.labels" -}}
helm.sh/chart: {{ include "llmproxy.chart" . }}
{{ include "llmproxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "llmproxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmproxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "llmproxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llmproxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "llmproxy.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* "StatefulSet" when the spool gets one PVC per pod, else "Deployment". */}}
{{- define "llmproxy.kind" -}}
{{- if and .Values.spool.persistence.enabled (eq .Values.spool.persistence.mode "statefulset") -}}
StatefulSet
{{- else -}}
Deployment
{{- end }}
{{- end }}

{{/* Port that serves /health and /metrics: the admin listener when set, else the proxy port. */}}
{{- define "llmproxy.opsPortName" -}}
{{- if gt (int .Values.adminPort) 0 }}admin{{ else }}http{{ end }}
{{- end }}

{{/* A TOML string: JSON string syntax is valid TOML basic-string syntax. */}}
{{- define "llmproxy.tomlString" -}}
{{- toJson (toString .) }}
{{- end }}

{{/* A TOML array of strings. */}}
{{- define "llmproxy.tomlStrings" -}}
[{{- range $i, $v := . }}{{ if $i }}, {{ end }}{{ toJson (toString $v) }}{{- end }}]
{{- end }}

{{/* Checks on values that would otherwise produce a broken deployment. */}}
{{- define "llmproxy.validate" -}}
{{- $p := .Values.spool.persistence }}
{{- if not (has $p.mode (list "statefulset" "claim")) }}
{{- fail "spool.persistence.mode must be statefulset or claim" }}
{{- end }}
{{- if and $p.enabled (eq $p.mode "claim") (or .Values.hpa.enabled (gt (int .Values.replicaCount) 1)) }}
{{- fail "spool.persistence.mode=claim shares one volume: set replicaCount=1 and hpa.enabled=false, or use mode=statefulset" }}
{{- end }}
{{- if not .Values.config.backends }}
{{- fail "config.backends: at least one backend is required" }}
{{- end }}
{{- range .Values.config.backends }}
{{- if hasKey . "api_key" }}
{{- fail "config.backends[].api_key would land in a ConfigMap: put that backend in the auth.existingSecret fragment instead" }}
{{- end }}
{{- end }}
{{- range .Values.config.auth.keys }}
{{- if hasKey . "key" }}
{{- fail "config.auth.keys[].key would put a raw key in a ConfigMap: use key_sha256, or auth.existingSecret" }}
{{- end }}
{{- end }}
{{- if hasKey .Values.config.usage_hook "secret" }}
{{- fail "config.usage_hook.secret would land in a ConfigMap: use usageHook.existingSecret" }}
{{- end }}
{{- if hasKey .Values.config.usage_hook "spool_dir" }}
{{- fail "config.usage_hook.spool_dir is fixed by the chart to the mounted volume /var/lib/llmproxy/spool" }}
{{- end }}
{{- end }}
