{{/*
Names. They are fixed, not derived from the release name: the webhook configurations,
the Service and the Secrets are names the operator itself looks for (its flags'
defaults), and the cluster-scoped objects exist once per cluster anyway.
*/}}
{{- define "monivault.name" -}}monivault{{- end }}
{{- define "monivault.webhookService" -}}monivault-webhook{{- end }}
{{- define "monivault.webhookConfiguration" -}}monivault{{- end }}
{{- define "monivault.certificateSecret" -}}monivault-webhook-cert{{- end }}

{{- define "monivault.selectorLabels" -}}
app.kubernetes.io/name: monivault
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "monivault.labels" -}}
{{ include "monivault.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The image: a digest wins over a tag; no tag means the chart's appVersion. */}}
{{- define "monivault.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/*
The namespaces every webhook covers. kube-system and the release namespace never: a
monivault that is down must not lock the cluster's components, nor the namespace it needs
mended to start again. Then the watched namespace, then what the user adds. Same order as
`monivault webhooks` (src/webhook/registration.rs).
*/}}
{{- define "monivault.namespaceSelector" -}}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values: {{ list "kube-system" .Release.Namespace | uniq | toJson }}
  {{- with .Values.watchNamespace }}
  - key: kubernetes.io/metadata.name
    operator: In
    values: [{{ . | quote }}]
  {{- end }}
  {{- with .Values.webhook.namespaceSelector.matchExpressions }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .Values.webhook.namespaceSelector.matchLabels }}
matchLabels:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
One webhook of either configuration. Takes a dict: root (the chart's context), name,
path, operations, resources, sideEffects, and for mutating ones reinvocationPolicy.
caBundle is never rendered: the operator (or cert-manager's CA injector) writes it, and
an upgrade must keep it.
*/}}
{{- define "monivault.webhook" -}}
{{- $root := .root -}}
- name: {{ .name }}
  admissionReviewVersions: ["v1"]
  clientConfig:
    {{- if $root.Values.webhook.url }}
    url: {{ printf "%s%s" (trimSuffix "/" $root.Values.webhook.url) .path | quote }}
    {{- else }}
    service:
      namespace: {{ $root.Release.Namespace }}
      name: {{ include "monivault.webhookService" $root }}
      port: 443
      path: {{ .path }}
    {{- end }}
  rules:
    - apiGroups: ["monivault.io"]
      apiVersions: ["v1alpha1"]
      operations: {{ toJson .operations }}
      resources: {{ toJson .resources }}
      scope: Namespaced
  failurePolicy: Fail
  matchPolicy: Equivalent
  sideEffects: {{ .sideEffects }}
  {{- with .reinvocationPolicy }}
  reinvocationPolicy: {{ . }}
  {{- end }}
  timeoutSeconds: {{ $root.Values.webhook.timeoutSeconds }}
  namespaceSelector:
    {{- include "monivault.namespaceSelector" $root | nindent 4 }}
  {{- with $root.Values.webhook.matchConditions }}
  matchConditions:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* Annotations of both webhook configurations. */}}
{{- define "monivault.webhookAnnotations" -}}
{{- if .Values.tls.certManager.enabled -}}
cert-manager.io/inject-ca-from: {{ printf "%s/%s" .Release.Namespace (include "monivault.certificateSecret" .) }}
{{- end -}}
{{- end }}

{{/* The host of webhook.url (no port), for the serving certificate. */}}
{{- define "monivault.urlHost" -}}
{{- with .Values.webhook.url -}}
{{- (urlParse .).hostname -}}
{{- end -}}
{{- end }}
