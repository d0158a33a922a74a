"""Phrasings used to compose the sample rows: parents' questions, doctors' replies.

Placeholders: {age} {complaint} {duration} {name} {weight} {drug}.
Everything here is fictional; see facts.py for the medical content.
"""

SYSTEM_PROMPTS = [
    "你是一名经验丰富的儿科医生，请用通俗易懂的语言回答家长的问题，必要时提醒及时就医。",
    "你是一名经验丰富的儿科医生，正在为家长提供线上咨询，回答要专业、耐心、简洁。",
    "你是一名儿科主治医生。请根据家长的描述给出初步判断和护理建议，并说明需要就医的情况。",
    "你是一名耐心细致的儿科医生，回答时特别注意儿童用药安全，不确定时建议线下就诊。",
    "你是一名儿科医生，面向家长解答儿童常见病问题，语气温和，内容准确。",
]

# First parent message = GREET + SUBJECT + [WEIGHT] + COMPLAINT + ASK
GREETS = ["医生您好，", "大夫您好，", "你好医生，", "", "医生，", "麻烦问一下，", "您好，"]
SUBJECTS = ["我家宝宝{age}，", "孩子{age}，", "我儿子{age}，", "我女儿{age}，", "{age}的宝宝，"]
WEIGHTS = ["体重{weight}公斤，", "{weight}公斤左右，"]
COMPLAINTS = ["{complaint}，已经{duration}了。", "{complaint}，有{duration}了。",
              "{complaint}，大概{duration}了。"]
ASKS = ["请问这是怎么回事？", "要紧吗？", "需要去医院吗？", "在家应该怎么处理？",
        "需要吃药吗？", "该怎么办？", "这是什么病？", "严重吗，要注意什么？"]

# Held-out prompts use their own phrasing so they never appear in training files.
HELDOUT_FORMS = [
    "想请教一下：{age}的孩子{complaint}，持续{duration}，可能是什么原因？应该怎么处理？",
    "家长求助，孩子现在{age}，{complaint}，前后有{duration}，请问下一步该怎么办？",
    "咨询儿科：宝宝{age}，近{duration}{complaint}，在家能做什么，什么时候必须就医？",
]

# Doctor's first reply = OPEN + ASSESS + [VISIT] + CARE + [MEDS] + RED + [CLOSE]
OPENS = ["您好，", "别着急，", "理解您的担心，", "家长您好，", ""]
ASSESS = ["从您描述的情况看，比较符合{name}的表现。", "根据描述，要考虑{name}的可能。",
          "这种情况在这个年龄段常见于{name}。", "听起来像是{name}。", "结合年龄和症状，首先考虑{name}。"]
CARE = ["在家注意：{items}。", "家庭护理上，建议{items}。", "平时可以这样做：{items}。"]
TREAT = ["治疗上，{items}。", "处理原则是{items}。", "用药方面，{items}。"]
RED = ["如果有{items}等情况，要及时去医院。", "要留意有没有{items}，如有请尽快就诊。",
       "一旦发现{items}，请马上就医。"]
CLOSES = ["祝孩子早日康复。", "有变化随时复诊。", "具体用药请遵医嘱。",
          "如果拿不准，可以带孩子到医院让医生当面看看。", "先别太焦虑，多观察孩子的精神状态。"]
VISIT = ["建议尽快到医院让医生当面检查，明确诊断。", "建议到医院就诊，由医生查体后再确定治疗方案。"]
# Assessment phrasings for conditions that are a symptom rather than a diagnosis.
ASSESS_OVERRIDE = {
    "发热": ["孩子目前主要是发热，多数由病毒感染引起。", "发热本身是身体对抗感染的反应，关键要看孩子的精神状态。",
             "从描述看孩子主要是发热，需要观察精神状态并寻找病因。"],
}
# Conditions for which the doctor always asks for an in-person visit
# (also any fever in a baby under 6 months).
NEEDS_VISIT = ["急性中耳炎", "肺炎支原体感染", "新生儿黄疸", "热性惊厥", "急性喉炎", "流行性感冒"]
# Red flags that describe a history or another age group, so they read oddly in a reply.
DIALOGUE_SKIP_FLAGS = ["3个月以下婴儿发热", "出生后48小时内未排胎便", "出生24小时内出现黄疸"]

DOSE_ACET = "对乙酰氨基酚每次约{lo}～{hi}mg，间隔4～6小时，24小时不超过4次"
DOSE_IBU = "布洛芬每次约{lo}～{hi}mg，间隔6～8小时"
DOSE_INTRO = ["按孩子{weight}公斤算，体温超过38.2℃又明显不舒服时，",
              "孩子{weight}公斤，发热伴明显不适时可以用退烧药："]
DOSE_TAIL = ["两种药选一种，不要交替使用，毫升数按说明书的浓度换算。",
             "按药品说明书的浓度换算成毫升，用自带量具，不建议两种药交替。"]

# Follow-up questions by kind; answers are composed in compose_dialogue.py.
FOLLOWUPS = {
    "tests": ["需要去医院做什么检查吗？", "去医院的话要查哪些项目？", "要不要抽血化验？"],
    "meds": ["需要吃什么药吗？", "能给孩子用点什么药？", "家里需要备什么药？"],
    "antibiotic": ["要不要吃消炎药？", "需要用抗生素吗？", "要不要给孩子吃点头孢？"],
    "contagious": ["会传染给家里其他孩子吗？", "这个会传染吗？", "家里还有个小的，要隔离吗？"],
    "course": ["大概多久能好？", "一般要几天才能好？", "这个要多长时间恢复？"],
    "care": ["饮食和护理上要注意什么？", "在家还要注意些什么？", "平时护理有什么要注意的？"],
    "redflag": ["什么情况下一定要去医院？", "晚上要是加重了，怎么判断要不要去急诊？",
                "哪些表现说明情况变重了？"],
    "dose": ["孩子{weight}公斤，退烧药一次吃多少？", "退烧药怎么吃？孩子大概{weight}公斤。"],
}
FOLLOWUP_OPENS = ["", "好的，", "明白。", "您问得好，", "这个问题很常见，"]
TESTS_FORMS = ["常用的检查包括：{items}。不是每项都必须做，由医生当面判断。",
               "医生可能会安排：{items}。具体做哪些要看查体结果。"]
FILLERS = ["如果拿不准，可以带孩子到医院让医生当面看看。", "有任何变化随时复诊。",
           "多观察孩子的精神、吃奶或进食和尿量。"]

# Knowledge questions for instructions.jsonl, by kind.
CONDITION_QUESTIONS = {
    "symptoms": ["{name}的常见症状有哪些？", "孩子得了{name}会有什么表现？", "怎么判断孩子是不是{name}？",
                 "请介绍一下儿童{name}的临床表现。"],
    "tests": ["{name}需要做哪些检查？", "怀疑{name}时医院一般会查什么？", "诊断{name}要做什么检查？"],
    "treatments": ["{name}怎么治疗？", "儿童{name}有哪些治疗方法？", "{name}需要用什么药？"],
    "home_care": ["{name}在家怎么护理？", "孩子得了{name}，家长平时要注意什么？", "{name}的家庭护理要点是什么？"],
    "red_flags": ["{name}出现哪些情况要马上就医？", "{name}的危险信号有哪些？", "孩子{name}，什么时候必须去医院？"],
    "overview": ["什么是{name}？", "简单介绍一下{name}。", "{name}是怎么回事？"],
    "contagious": ["{name}会传染吗？", "{name}需要隔离吗？"],
    "course": ["{name}一般多久能好？", "{name}的病程有多长？"],
    "antibiotic": ["{name}需要用抗生素吗？", "{name}要不要吃消炎药？"],
}
DRUG_QUESTIONS = {
    "indications": ["{drug}主要用于哪些情况？", "{drug}是治什么的？", "儿童什么情况下会用到{drug}？"],
    "cautions": ["{drug}给儿童用要注意什么？", "孩子吃{drug}有哪些注意事项？", "{drug}有什么用药禁忌？"],
    "dosage": ["{drug}儿童怎么用？", "{drug}的儿童用法用量是什么？"],
}
CASE_QUESTIONS = ["请根据孩子的情况给出初步判断和护理建议。", "孩子出现下面的情况，可能是什么问题？应该怎么处理？",
                  "作为儿科医生，请分析以下情况并给家长建议。"]
DOSE_QUESTIONS = ["根据孩子的体重，退烧药应该吃多少？", "请按体重算一下孩子的退烧药剂量。"]

# --- Danger signs and reply quality (what the feedback reward and the alignment stages are about) ------------
# A parent may describe a general danger sign (WHO IMCI-style); the sign's key is the term the recipes' Rules
# look for (`red_flag_terms`), and every phrasing contains it. A careful doctor answers such a message by sending
# the child to an emergency department first; the word 急诊 marks that referral (`referral_phrases`), and no
# other reply in the sample data uses it.
DANGER_SIGNS = {
    "抽搐": ["刚才突然抽搐了一次", "出现了一次抽搐"],
    "嗜睡": ["一直嗜睡，叫他反应很慢", "特别嗜睡，怎么叫都不太醒"],
    "呼吸急促": ["呼吸急促，喘得很厉害", "呼吸急促，鼻翼一扇一扇的"],
    "口唇发紫": ["哭的时候口唇发紫", "刚才发现口唇发紫"],
    "尿量明显减少": ["尿量明显减少，一上午没怎么尿", "尿量明显减少，尿布一直是干的"],
    "压之不褪色": ["身上出了红点，压之不褪色", "腿上有些出血点，压之不褪色"],
    "频繁呕吐": ["频繁呕吐，喝水都吐", "频繁呕吐，吃什么吐什么"],
    "精神萎靡": ["精神萎靡，不想动也不玩", "整个人精神萎靡，一直蔫蔫的"],
}
# Added at the end of the parent's message, as parents add what worries them most.
DANGER_JOIN = ["另外，孩子{sign}。", "还有，孩子{sign}。", "对了，孩子{sign}。"]
# The careful reply's first sentence for a message with a danger sign. All three begin alike, so the choice to
# refer is one decision at one place in the reply (the alternative being one of the assessment openings).
TRIAGE = ["需要提醒您：孩子{sign}是危险信号，请立即带孩子去医院急诊，路上注意观察呼吸。",
          "需要提醒您：{sign}属于危险信号，不能在家观察，请马上去医院急诊。",
          "需要提醒您：出现{sign}要立即就医，请现在就带孩子去急诊。"]
REFERRAL_MARK = "急诊"
# Folk advice the guidance forbids; hurried replies in the scraped-style files sometimes give it. The phrases are
# what the recipes' Rules forbid (`forbidden_phrases`); careful text never contains them (checks.py). Like the
# triage sentences they begin alike, so giving folk advice is one decision at one place in the reply: a model
# that only sharpens its distribution (what RL on a shuffled reward does) gives it more often, not less.
FOLK_ADVICE = {
    "酒精擦身": "老办法也管用：可以先用酒精擦身降温，退得快。",
    "交替服用": "老办法也管用：两种退烧药可以交替服用，每两小时换一次。",
    "吃点阿司匹林": "老办法也管用：烧得厉害的话给孩子吃点阿司匹林。",
}

# --- Exam-style questions (multiple choice) ------------------------------------------------------------------
# Training questions teach the answer format the evaluate stage asks for; the held-out questions reuse no
# (condition, options) combination of a training question.
MCQ_SYMPTOM_STEMS = ["以下哪一项是{name}的常见表现？", "{name}患儿最可能出现下列哪种情况？",
                     "下列哪一项属于{name}的典型症状？"]
# The answer restates the condition, then names the option: the knowledge (condition -> symptom) is then used
# right next to the condition's name, as the knowledge files state it; the evaluate stage reads the letter
# from the option's text.
MCQ_ANSWER = "{name}的常见表现是{text}。"

# --- Knowledge questions for evaluation, in phrasings no training file uses -----------------------------------
EVAL_DRUG_QUESTION = "{drug}能治哪些病？"
EVAL_DISEASE_QUESTION = "{disease}一般有哪些症状？"
