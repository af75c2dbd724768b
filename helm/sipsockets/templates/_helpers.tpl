{{/* Names, labels and the few values several templates derive the same way. */}}

{{- define "sipsockets.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sipsockets.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A name with a suffix, kept within the 63 characters of a label value / DNS label. */}}
{{- define "sipsockets.componentName" -}}
{{- $root := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- printf "%s-%s" (include "sipsockets.fullname" $root | trunc (int (sub 62 (len $suffix)))) $suffix | trimSuffix "-" -}}
{{- end -}}

{{- define "sipsockets.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "sipsockets.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sipsockets
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component. The proxy's are exactly the operator's default proxy selector. */}}
{{- define "sipsockets.selectorLabels" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
app.kubernetes.io/name: {{ include "sipsockets.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ $component }}
{{- end -}}

{{- define "sipsockets.componentLabels" -}}
{{- $root := index . 0 -}}
{{ include "sipsockets.labels" $root }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* The label selector string the operator uses to find proxy pods. */}}
{{- define "sipsockets.proxySelector" -}}
{{- if .Values.operator.proxySelector -}}
{{- .Values.operator.proxySelector -}}
{{- else -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s,app.kubernetes.io/component=proxy" (include "sipsockets.name" .) .Release.Name -}}
{{- end -}}
{{- end -}}

{{- define "sipsockets.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) -}}
{{- end -}}

{{- define "sipsockets.proxyImage" -}}
{{- printf "%s:%s" .Values.proxy.image.repository (default .Chart.AppVersion .Values.proxy.image.tag) -}}
{{- end -}}

{{- define "sipsockets.serviceAccountName" -}}
{{- include "sipsockets.componentName" (list . "operator") -}}
{{- end -}}

{{- define "sipsockets.miSecretName" -}}
{{- default (include "sipsockets.componentName" (list . "mi-token")) .Values.mi.token.existingSecret -}}
{{- end -}}

{{/* The MI's mutual TLS: the Secrets of the proxies' server certificate and of the operator's client
certificate (each with tls.crt, tls.key and ca.crt, the CA that signed both). */}}
{{- define "sipsockets.miProxyTlsSecret" -}}
{{- include "sipsockets.componentName" (list . "mi-proxy-tls") -}}
{{- end -}}

{{- define "sipsockets.miOperatorTlsSecret" -}}
{{- include "sipsockets.componentName" (list . "mi-operator-tls") -}}
{{- end -}}

{{/* The headless Service of the proxies' MI and metrics ports. */}}
{{- define "sipsockets.proxyMiServiceName" -}}
{{- include "sipsockets.componentName" (list . "proxy-mi") -}}
{{- end -}}

{{/*
The name the operator checks in the proxies' MI certificate. The proxies are called by pod IP, which a
certificate shared by a DaemonSet or Deployment cannot list; this DNS name of their headless Service resolves to
exactly those pod IPs, so it is a true name of every proxy pod, and it is specific to this release.
*/}}
{{- define "sipsockets.miServerName" -}}
{{- printf "%s.%s.svc" (include "sipsockets.proxyMiServiceName" .) .Release.Namespace -}}
{{- end -}}

{{/* "true" when cert-manager issues the MI's certificates: mi.tls.certManager.enabled true, or auto and the
cluster serves cert-manager.io/v1. */}}
{{- define "sipsockets.miCertManager" -}}
{{- $cm := .Values.mi.tls.certManager.enabled -}}
{{- if kindIs "bool" $cm -}}
{{- if $cm }}true{{ end -}}
{{- else if .Capabilities.APIVersions.Has "cert-manager.io/v1" -}}
true
{{- end -}}
{{- end -}}

{{- define "sipsockets.bundledDatabase" -}}
{{- if not .Values.database.external.existingSecret }}true{{ end -}}
{{- end -}}

{{- define "sipsockets.dbSecretName" -}}
{{- default (include "sipsockets.componentName" (list . "db-url")) .Values.database.external.existingSecret -}}
{{- end -}}

{{- define "sipsockets.dbSecretKey" -}}
{{- if .Values.database.external.existingSecret -}}
{{- .Values.database.external.secretKey -}}
{{- else -}}
db-url
{{- end -}}
{{- end -}}

{{- define "sipsockets.postgresqlName" -}}
{{- include "sipsockets.componentName" (list . "postgresql") -}}
{{- end -}}

{{- define "sipsockets.webhookServiceName" -}}
{{- include "sipsockets.componentName" (list . "webhook") -}}
{{- end -}}

{{- define "sipsockets.webhookSecretName" -}}
{{- include "sipsockets.componentName" (list . "webhook-tls") -}}
{{- end -}}

{{/* The leader-election Lease of the operator replicas (RBAC names it: get and update on it only). */}}
{{- define "sipsockets.leaseName" -}}
{{- default (include "sipsockets.componentName" (list . "operator")) .Values.operator.leaderElection.leaseName -}}
{{- end -}}

{{/* The container securityContext every chart container shares; the proxy adds NET_BIND_SERVICE. */}}
{{- define "sipsockets.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop:
    - ALL
{{- end -}}

{{- define "sipsockets.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
The schema init container: `sipproxy db init` is idempotent (tables created only when missing). The URL holds
the database password, so it is read from the pod's db-url Secret volume, never put on the command line
(readable in /proc/PID/cmdline).
*/}}
{{- define "sipsockets.dbInitContainer" -}}
- name: db-init
  image: {{ include "sipsockets.proxyImage" . }}
  imagePullPolicy: {{ .Values.proxy.image.pullPolicy }}
  command:
    - sipproxy
    - db
    - init
    - --db-url-file
    - /etc/sipsockets/db/db-url
    - --table-name
    - {{ .Values.database.tableName | quote }}
  securityContext:
    {{- include "sipsockets.containerSecurityContext" . | nindent 4 }}
  resources:
    requests:
      cpu: 10m
      memory: 64Mi
    limits:
      cpu: 500m
      memory: 128Mi
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: db-url
      mountPath: /etc/sipsockets/db
      readOnly: true
{{- end -}}

{{/* The proxy config's `mi`: mutual TLS with the mounted certificate (clients must present one from the same
CA), and the token when enabled. */}}
{{- define "sipsockets.proxyMiConfig" -}}
{{- $mi := dict "listen" (printf "0.0.0.0:%d" (int .Values.mi.port)) "root" .Values.mi.root -}}
{{- if .Values.mi.tls.enabled -}}
{{- $_ := set $mi "tls" (dict "certificate" "/etc/sipsockets/mi-tls/tls.crt" "private_key" "/etc/sipsockets/mi-tls/tls.key" "client_ca" "/etc/sipsockets/mi-tls/ca.crt") -}}
{{- end -}}
{{- if .Values.mi.token.enabled -}}
{{- $_ := set $mi "token_file" "/etc/sipsockets/mi/token" -}}
{{- end -}}
{{- toYaml $mi -}}
{{- end -}}

{{/* The sipproxy config file (sockets_mgm.db_url is filled in at pod start from the database Secret). */}}
{{- define "sipsockets.proxyConfig" -}}
{{- $p := .Values.proxy -}}
{{- $config := dict
  "sockets" $p.sockets
  "udp_workers" $p.udpWorkers
  "tcp_workers" $p.tcpWorkers
  "sockets_mgm" (dict
    "db_url" ""
    "table_name" .Values.database.tableName
    "processes" $p.socketsMgm.processes
    "max_sockets" $p.socketsMgm.maxSockets)
  "mi" (include "sipsockets.proxyMiConfig" . | fromYaml)
  "metrics" (dict "listen" (printf "0.0.0.0:%d" (int .Values.mi.metricsPort)))
  "routes" $p.routes
  "log_level" $p.logLevel
  "tcp_idle_timeout" $p.tcpIdleTimeout
-}}
{{- if and (eq $p.mode "hostNetwork") $p.hostNetwork.handover }}
{{- /* The fleet's name: only pods of this release's DaemonSet hand sockets to each other. */}}
{{- $_ := set $config "handover" (dict "name" (printf "%s/%s" .Release.Namespace (include "sipsockets.componentName" (list . "proxy")))) }}
{{- /* Readiness per pod (an exec probe of this file): the pods of a node share the metrics port meanwhile. */}}
{{- $_ := set $config "ready_file" "/tmp/sipproxy-ready" }}
{{- end }}
{{- toYaml $config -}}
{{- end -}}
