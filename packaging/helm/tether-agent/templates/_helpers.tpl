{{- define "tether-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tether-agent.fullname" -}}
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

{{- define "tether-agent.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "tether-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tether-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tether-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tether-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tether-agent.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tether-agent.tokenSecret" -}}
{{- if .Values.token.existingSecret }}
{{- .Values.token.existingSecret }}
{{- else }}
{{- printf "%s-token" (include "tether-agent.fullname" .) }}
{{- end }}
{{- end }}

{{- define "tether-agent.hasCA" -}}
{{- if or .Values.customCA.secretName .Values.customCA.configMapName }}true{{- end }}
{{- end }}

{{/* The agent's TOML: the user's config with [relay], [agent], [admin] set by the chart. */}}
{{- define "tether-agent.config" -}}
{{- $config := deepCopy (default (dict) .Values.config) }}
{{- $relay := dict "url" .Values.relay.url "token_file" "/etc/tether/token/token" "connections" (int .Values.relay.connections) }}
{{- if include "tether-agent.hasCA" . }}
{{- $_ := set $relay "ca_file" "/etc/tether/ca/ca.pem" }}
{{- end }}
{{- $_ := set $config "relay" $relay }}
{{- $_ := set $config "agent" (dict "name" (default (include "tether-agent.fullname" .) .Values.agent.name) "tags" .Values.agent.tags) }}
{{- $_ := set $config "admin" (dict "listen" (printf "0.0.0.0:%d" (int .Values.admin.port))) }}
{{- if not (hasKey $config "drain_timeout") }}
{{- $_ := set $config "drain_timeout" (printf "%ds" (max 1 (sub (int .Values.terminationGracePeriodSeconds) 5))) }}
{{- end }}
{{- if not $config.routes }}
{{- $_ := unset $config "routes" }}
{{- end }}
{{- toToml $config }}
{{- end }}
