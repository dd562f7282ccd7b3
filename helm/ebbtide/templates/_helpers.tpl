{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "ebbtide.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every object name: the release name, with the chart name unless it already contains it. */}}
{{- define "ebbtide.fullname" -}}
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

{{/* Labels every object carries. */}}
{{- define "ebbtide.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "ebbtide.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ebbtide
{{- end }}

{{/* Selector labels of one component (pass a dict with "ctx" and "component"). */}}
{{- define "ebbtide.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ebbtide.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "ebbtide.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-operator" (include "ebbtide.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image reference. */}}
{{- define "ebbtide.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Redis URL the operator gets as EBBTIDE_REDIS_URL: the bundled Redis or the external one. */}}
{{/* An IP as a URL's host: IPv6 in brackets. */}}
{{- define "ebbtide.redisHost" -}}
{{- if contains ":" . }}[{{ . }}]{{ else }}{{ . }}{{ end }}
{{- end }}

{{- define "ebbtide.redisURL" -}}
{{- if and .Values.redis.enabled .Values.redis.service.clusterIP }}
{{- /* A fixed ClusterIP needs no cluster DNS to reach. */}}
{{- printf "redis://%s:6379/0" (include "ebbtide.redisHost" .Values.redis.service.clusterIP) }}
{{- else if .Values.redis.enabled }}
{{- printf "redis://%s-redis.%s.svc:6379/0" (include "ebbtide.fullname" .) .Release.Namespace }}
{{- else }}
{{- .Values.redis.external.url }}
{{- end }}
{{- end }}

{{/* The restricted Pod Security Standard's container settings, shared by every container of the chart. */}}
{{- define "ebbtide.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}
