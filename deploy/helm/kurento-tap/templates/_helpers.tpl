{{/* Names and labels shared by every object of the release. */}}
{{- define "kurento-tap.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kurento-tap.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Where daemons and workers find NATS: nats.url, else the subchart's service. */}}
{{- define "kurento-tap.natsUrl" -}}
{{- if .Values.nats.url -}}
{{ .Values.nats.url }}
{{- else if .Values.nats.enabled -}}
nats://{{ .Release.Name }}-nats:4222
{{- else -}}
{{ fail "nats.enabled=false needs nats.url" }}
{{- end -}}
{{- end -}}

{{/* The daemons' KMS list as kurento-tap reads it: name=url,name=url. */}}
{{- define "kurento-tap.kmsList" -}}
{{- $items := list -}}
{{- range .Values.daemon.kms -}}
{{- $items = append $items (printf "%s=%s" .name .url) -}}
{{- end -}}
{{- join "," $items -}}
{{- end -}}

{{/* The Secret holding the daemons' data token: daemon.data.tokenSecret, else the one the chart
makes (none with a trusted proxy header and no tokenSecret). */}}
{{- define "kurento-tap.tokenSecret" -}}
{{- if .Values.daemon.data.tokenSecret -}}
{{ .Values.daemon.data.tokenSecret }}
{{- else if not .Values.daemon.data.authProxyHeader -}}
{{ include "kurento-tap.fullname" . }}-data-token
{{- end -}}
{{- end -}}
