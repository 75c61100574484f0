{{- define "tiergate.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tiergate.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tiergate.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "tiergate.secretName" -}}
{{- default (printf "%s-secrets" (include "tiergate.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* Environment shared by the gateway and the migration job. */}}
{{- define "tiergate.env" -}}
- name: TIERGATE_CONFIG
  value: /etc/tiergate/catalog.yaml
- name: TIERGATE_DATABASE_URL
  valueFrom: {secretKeyRef: {name: {{ include "tiergate.secretName" . }}, key: database-url}}
- name: TIERGATE_REDIS_URL
  valueFrom: {secretKeyRef: {name: {{ include "tiergate.secretName" . }}, key: redis-url, optional: true}}
- name: TIERGATE_MASTER_KEY
  valueFrom: {secretKeyRef: {name: {{ include "tiergate.secretName" . }}, key: master-key}}
- name: DEEPSEEK_API_KEY
  valueFrom: {secretKeyRef: {name: {{ include "tiergate.secretName" . }}, key: deepseek-api-key, optional: true}}
- name: TIERGATE_REQUIRE_API_KEY
  value: {{ .Values.requireApiKey | quote }}
- name: TIERGATE_BUDGET_TIMEZONE
  value: {{ .Values.budgetTimezone | quote }}
- name: TIERGATE_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: TIERGATE_LEDGER_DRAIN
  value: {{ ternary "external" "inline" .Values.ledgerDrain.enabled | quote }}
{{- end -}}
