{{/* Chart name, truncated to what a Kubernetes name allows. */}}
{{- define "videotag-worker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart unless the release name already contains the chart name. */}}
{{- define "videotag-worker.fullname" -}}
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

{{- define "videotag-worker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "videotag-worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "videotag-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "videotag-worker.labels" -}}
helm.sh/chart: {{ include "videotag-worker.chart" . }}
{{ include "videotag-worker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: worker
app.kubernetes.io/part-of: videotag
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "videotag-worker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "videotag-worker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "videotag-worker.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The Prometheus job of the worker targets: the ServiceMonitor takes it from the Service's name label. */}}
{{- define "videotag-worker.jobName" -}}
{{- include "videotag-worker.name" . }}
{{- end }}

{{/* Label matchers selecting this release's worker series in PromQL. */}}
{{- define "videotag-worker.promSelector" -}}
{{- printf "job=%q,namespace=%q" (include "videotag-worker.jobName" .) .Release.Namespace }}
{{- end }}

{{/* Refuse values that would render a deployment that cannot work. Included by every template. */}}
{{- define "videotag-worker.validate" -}}
{{- $drain := 120.0 }}
{{- if hasKey .Values.config "drain_grace_s" }}
{{- $drain = float64 .Values.config.drain_grace_s }}
{{- end }}
{{- if le (float64 .Values.terminationGracePeriodSeconds) $drain }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be greater than config.drain_grace_s (%v): Kubernetes would kill workers before they finish draining" .Values.terminationGracePeriodSeconds $drain) }}
{{- end }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%v) is greater than autoscaling.maxReplicas (%v)" .Values.autoscaling.minReplicas .Values.autoscaling.maxReplicas) }}
{{- end }}
{{- if and (eq .Values.autoscaling.mode "hpa") (lt (int .Values.autoscaling.minReplicas) 1) }}
{{- fail "autoscaling.mode hpa needs autoscaling.minReplicas >= 1 (only KEDA scales to zero)" }}
{{- end }}
{{- if and (eq .Values.weights.source "pvc") (not .Values.weights.pvc.claimName) }}
{{- fail "weights.source pvc needs weights.pvc.claimName" }}
{{- end }}
{{- $protocol := .Values.config.security_protocol | default "PLAINTEXT" }}
{{- if and .Values.kafka.sasl.existingSecret (not (contains "SASL" $protocol)) }}
{{- fail "kafka.sasl.existingSecret is set but config.security_protocol is neither SASL_PLAINTEXT nor SASL_SSL" }}
{{- end }}
{{- if and .Values.kafka.ssl.existingSecret (not (contains "SSL" $protocol)) }}
{{- fail "kafka.ssl.existingSecret is set but config.security_protocol is neither SSL nor SASL_SSL" }}
{{- end }}
{{- if and .Values.autoscaling.keda.allowIdleConsumers .Values.autoscaling.keda.limitToPartitionsWithLag }}
{{- fail "autoscaling.keda.allowIdleConsumers and autoscaling.keda.limitToPartitionsWithLag exclude each other" }}
{{- end }}
{{- $requests := (.Values.resources | default dict).requests | default dict }}
{{- $limits := (.Values.resources | default dict).limits | default dict }}
{{- if not (or (hasKey $requests "cpu") (hasKey $limits "cpu")) }}
{{- fail "resources: set resources.requests.cpu (the CPU limit is made equal to it) or resources.limits.cpu: without either the pod has no CPU quota, and each worker would start one math thread per node core" }}
{{- end }}
{{- if and (contains "SASL" $protocol) (not .Values.kafka.sasl.existingSecret) }}
{{- fail "config.security_protocol uses SASL: name the Secret holding the password in kafka.sasl.existingSecret" }}
{{- end }}
{{- end }}
