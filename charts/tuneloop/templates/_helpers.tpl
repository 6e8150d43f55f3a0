{{/* Chart name. */}}
{{- define "tuneloop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: RELEASE-tuneloop, or RELEASE when it already contains the chart name. */}}
{{- define "tuneloop.fullname" -}}
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

{{- define "tuneloop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of the operator pod (never change them: Deployment selectors are immutable). */}}
{{- define "tuneloop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tuneloop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "tuneloop.labels" -}}
helm.sh/chart: {{ include "tuneloop.chart" . }}
{{ include "tuneloop.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: tuneloop
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tuneloop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tuneloop.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Operator image: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "tuneloop.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Namespaces the operator watches when scope is namespaced (default: the release namespace). */}}
{{- define "tuneloop.watchNamespaces" -}}
{{- if .Values.watchNamespaces }}
{{- join "," .Values.watchNamespaces }}
{{- else }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/* True (non-empty) when the Prometheus Operator's API is served and monitoring is on. */}}
{{- define "tuneloop.monitoring" -}}
{{- if and .Values.monitoring.enabled (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") }}true{{ end }}
{{- end }}

{{/* namespaceSelector of the PodMonitors. */}}
{{- define "tuneloop.podMonitorNamespaces" -}}
{{- if .Values.monitoring.podMonitorNamespaces }}
matchNames:
{{- toYaml .Values.monitoring.podMonitorNamespaces | nindent 2 }}
{{- else if eq .Values.scope "cluster" }}
any: true
{{- else }}
matchNames:
{{- range splitList "," (include "tuneloop.watchNamespaces" .) }}
  - {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}
