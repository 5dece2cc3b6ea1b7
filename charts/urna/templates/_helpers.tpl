{{/* Common labels of every object. */}}
{{- define "urna.labels" -}}
app.kubernetes.io/part-of: urna
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "name" "host"). */}}
{{- define "urna.selector" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}

{{/* An image reference: (dict "root" $ "image" .Values.host.image).
     urna images: <registry>/<namespace>/<repository>:<tag or global tag or appVersion>;
     official third-party images (official: true) are <registry>/<repository>:<tag>.
     An optional image.digest (sha256:…) is appended: the kubelet then pulls exactly
     that image, whatever the tag points to now. */}}
{{- define "urna.image" -}}
{{- $g := .root.Values.global.image -}}
{{- $tag := .image.tag | default $g.tag | default .root.Chart.AppVersion -}}
{{- $ref := "" -}}
{{- if .image.official -}}
{{- $ref = printf "%s/%s:%s" $g.registry .image.repository $tag -}}
{{- else -}}
{{- $ns := required "global.image.namespace is required: the Docker Hub user or organisation the urna images were pushed to (make push DOCKERHUB_NAMESPACE=...); set it with --set global.image.namespace=$DOCKERHUB_NAMESPACE" $g.namespace -}}
{{- $ref = printf "%s/%s/%s:%s" $g.registry $ns .image.repository $tag -}}
{{- end -}}
{{- with .image.digest -}}
{{- if not (regexMatch "^sha256:[0-9a-f]{64}$" .) -}}
{{- fail (printf "image digest %q is not sha256:<64 hex digits>" .) -}}
{{- end -}}
{{- $ref = printf "%s@%s" $ref . -}}
{{- end -}}
{{ $ref }}
{{- end }}

{{/* Pod-level security: non-root, the runtime's default seccomp profile. */}}
{{- define "urna.podSecurity" -}}
runAsNonRoot: true
runAsUser: {{ .uid | default 10001 }}
runAsGroup: {{ .uid | default 10001 }}
fsGroup: {{ .uid | default 10001 }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level security: no privilege escalation, no capabilities, read-only root. */}}
{{- define "urna.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* Hard topology spread over node labels: (dict "keys" list "labels" "<k: v lines>"). */}}
{{- define "urna.topologySpread" -}}
{{- range .keys }}
- maxSkew: 1
  topologyKey: {{ . }}
  whenUnsatisfiable: DoNotSchedule
  labelSelector:
    matchLabels:
      {{- $.labels | nindent 6 }}
{{- end }}
{{- end }}

{{/* In-cluster addresses, built once here so every service gets the same ones. */}}
{{- define "urna.kafkaBrokers" -}}
{{ .Values.kafka.clusterName }}-kafka-bootstrap.{{ .Values.namespaces.kafka.name }}.svc.{{ .Values.global.clusterDomain }}:9092
{{- end }}

{{- define "urna.redisHost" -}}
urna-redis.{{ .Values.namespaces.data.name }}.svc.{{ .Values.global.clusterDomain }}
{{- end }}

{{/* The replica set's seed list: every member by its stable StatefulSet DNS name. */}}
{{- define "urna.mongoHosts" -}}
{{- $root := . -}}
{{- $hosts := list -}}
{{- range $i := until (int .Values.mongodb.replicas) -}}
{{- $hosts = append $hosts (printf "urna-mongodb-%d.urna-mongodb.%s.svc.%s:27017" $i $root.Values.namespaces.data.name $root.Values.global.clusterDomain) -}}
{{- end -}}
{{ join "," $hosts }}
{{- end }}

{{/* The Secret of a store (redis, mongodb, grafana): secrets.<store>.existingSecret, or
     the chart's urna-<store>; (dict "root" $ "store" "redis"). */}}
{{- define "urna.secretName" -}}
{{ (index .root.Values.secrets .store).existingSecret | default (printf "urna-%s" .store) }}
{{- end }}

{{/* Env entries that build URNA_REDIS_URL for one Redis ACL user from the Secret in the
     pod's namespace (Kubernetes expands $(VAR) from earlier entries);
     (dict "root" $ "user" "consumer"). */}}
{{- define "urna.redisEnv" -}}
- name: URNA_REDIS_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ include "urna.secretName" (dict "root" .root "store" "redis") }}, key: {{ .user }}-password}
- name: URNA_REDIS_URL
  value: "redis://{{ .user }}:$(URNA_REDIS_PASSWORD)@{{ include "urna.redisHost" .root }}:6379"
{{- end }}

{{/* The producers' idempotency store: the consumer's Redis, prefix and window (the
     two sides must agree on both); (dict "root" $ "user" "host"). */}}
{{- define "urna.idempotencyEnv" -}}
{{ include "urna.redisEnv" . }}
{{ include "urna.envMap" (pick .root.Values.consumer.env "URNA_REDIS_PREFIX" "URNA_IDEMPOTENCY_WINDOW_SECS") }}
{{- end }}

{{/* URNA_REDIS_URL and URNA_MONGO_URL of one service, as its own user of each (same
     name in Redis and MongoDB); (dict "root" $ "user" "consumer"). */}}
{{- define "urna.storeEnv" -}}
{{- $root := .root -}}
{{ include "urna.redisEnv" . }}
- name: URNA_MONGO_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ include "urna.secretName" (dict "root" $root "store" "mongodb") }}, key: {{ .user }}-password}
- name: URNA_MONGO_URL
  value: "mongodb://{{ .user }}:$(URNA_MONGO_PASSWORD)@{{ include "urna.mongoHosts" $root }}/?replicaSet={{ $root.Values.mongodb.replicaSetName }}&authSource=admin"
{{- end }}

{{/* The Redis ACL users, one `user` line each; the Redis pod's init container adds `on`
     and each password's SHA-256 (from the Secret) to every user but default. Commands
     and keys are what each service's code runs (charts/tests/test_access.py lists where). */}}
{{- define "urna.redisAcl" -}}
{{- $p := .Values.consumer.env.URNA_REDIS_PREFIX -}}
{{- $connect := "+ping +client|setinfo" -}}
{{- $scripts := "+evalsha +script|load" -}}
# default: no password, PING only (the Redis pod's own probes); nothing else.
user default on nopass resetkeys resetchannels -@all +ping
# consumer: apply.lua / skip.lua (and the commands they call), its state, `reset`.
user consumer resetkeys resetchannels ~{{ $p }}:* -@all {{ $connect }} {{ $scripts }} +hgetall +exists +del +unlink +scan +type +zscore +hmget +hget +get +hset +incrby +hincrby +zadd +zremrangebyscore
# host: idempotency entries (BEGIN/SETTLE scripts, INFO gauges) and the function store.
user host resetkeys resetchannels ~{{ $p }}:idempotency:request:* ~{{ $p }}:functions:* -@all {{ $connect }} {{ $scripts }} +info +time +get +set +del +sadd +incr +lpush +ltrim +smembers +lrange +hincrby +hgetall +hkeys +hdel
# grpc (the client front): idempotency entries only.
user grpc resetkeys resetchannels ~{{ $p }}:idempotency:request:* -@all {{ $connect }} {{ $scripts }} +info +time +get +set +del
# api: reads the counters (one MULTI) and the function store.
user api resetkeys resetchannels %R~{{ $p }}:* -@all {{ $connect }} +multi +exec +get +hgetall +smembers
# grafana: the dashboard's GET/HGETALL and the data source's PING.
user grafana resetkeys resetchannels %R~{{ $p }}:* -@all +ping +get +hgetall
{{- end }}

{{/* A map of URNA_* settings as env entries, in a stable order. */}}
{{- define "urna.envMap" -}}
{{- range $k, $v := . }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- end }}

{{/* HTTP probes on the services' own endpoints. */}}
{{- define "urna.httpProbes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: {{ .port }}}
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 2
{{- end }}

{{/* NetworkPolicy pieces: DNS to any namespace's pods and to the DNS servers outside
     the pods (networkPolicies.dnsCidrs); a namespace by its name label. */}}
{{- define "urna.np.dns" -}}
- to:
    - namespaceSelector: {}
    {{- range .Values.networkPolicies.dnsCidrs }}
    - ipBlock: {cidr: {{ . }}}
    {{- end }}
  ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
{{- end }}
{{- define "urna.np.ns" -}}
namespaceSelector:
  matchLabels:
    kubernetes.io/metadata.name: {{ . }}
{{- end }}

{{/* Redis maxmemory in MiB: the idempotency state of one window at the peak keyed rate,
     plus the counters and offsets (redis.sizing in values.yaml). */}}
{{- define "urna.redisMaxmemoryMiB" -}}
{{- $z := .Values.redis.sizing -}}
{{- $window := int (.Values.consumer.env.URNA_IDEMPOTENCY_WINDOW_SECS | default "600") -}}
{{- add (int $z.baseMiB) (div (mul $window (int $z.peakKeyedVotesPerSecond) (int $z.bytesPerKeyedVote)) 1048576) -}}
{{- end }}
