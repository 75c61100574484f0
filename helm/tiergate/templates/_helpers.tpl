{{- define "tiergate.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object; a component label is added by each template, once. */}}
{{- define "tiergate.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
{{- end -}}

{{/* Selector of one component: (list $ "gateway"). */}}
{{- define "tiergate.selectorOf" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ $.Chart.Name }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* All labels of one component's objects and pods: (list $ "gateway"). */}}
{{- define "tiergate.labelsOf" -}}
{{- $ := index . 0 -}}
{{ include "tiergate.labels" $ }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "tiergate.selector" -}}
{{ include "tiergate.selectorOf" (list . "gateway") }}
{{- end -}}

{{- define "tiergate.secretName" -}}
{{- default (printf "%s-secrets" (include "tiergate.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "tiergate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tiergate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tiergate.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag | quote }}
{{- end -}}

{{/* Environment shared by the gateway, the ledger writers and the migration step. */}}
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
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod-level fields shared by the gateway and the ledger writers. */}}
{{- define "tiergate.podSpec" -}}
serviceAccountName: {{ include "tiergate.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext: {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Pod annotations: checksums, so that a changed catalog or Secret rolls the pods. */}}
{{- define "tiergate.podAnnotations" -}}
checksum/catalog: {{ include (print .Template.BasePath "/configmap-catalog.yaml") . | sha256sum }}
{{- if not .Values.secrets.existingSecret }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The migration step: an init container of every pod that needs the schema. Runs
     `tiergate db upgrade` (serialized by a PostgreSQL advisory lock; a no-op on a database
     this code can already serve on), so that no pod serves before its schema is there. */}}
{{- define "tiergate.migrateInit" -}}
{{- if .Values.migrations.enabled }}
initContainers:
  - name: migrate
    image: {{ include "tiergate.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    args: ["db", "upgrade"]
    env: {{- include "tiergate.env" . | nindent 6 }}
    securityContext: {{- toYaml .Values.securityContext | nindent 6 }}
    resources: {{- toYaml .Values.migrations.resources | nindent 6 }}
    volumeMounts:
      - {name: catalog, mountPath: /etc/tiergate, readOnly: true}
      - {name: tmp, mountPath: /tmp}
{{- end }}
{{- end -}}

{{/* The launch profile of a vLLM tier, as JSON: (list $ "flash"). From
     `tiergate engine profile <tier> --format json`: files/vllm/<tier>.json unless
     vllm.<tier>.profile is given. The pods and the default catalog both read it. */}}
{{- define "tiergate.vllmProfile" -}}
{{- $ := index . 0 -}}
{{- $tier := index . 1 -}}
{{- $v := index $.Values.vllm $tier -}}
{{- $p := fromJson (default ($.Files.Get (printf "files/vllm/%s.json" $tier)) $v.profile) -}}
{{- if or (not $p.argv) (ne (toString $p.model) $tier) -}}
{{- fail (printf "vllm.%s.profile must be the JSON of `tiergate engine profile %s --format json`" $tier $tier) -}}
{{- end -}}
{{- toJson $p -}}
{{- end -}}

{{- define "tiergate.servedModel" -}}
{{- $argv := .argv -}}
{{- range $i, $a := $argv -}}
{{- if eq $a "--served-model-name" -}}{{ index $argv (add1 $i) }}{{- end -}}
{{- end -}}
{{- end -}}
